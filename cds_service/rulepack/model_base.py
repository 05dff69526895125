"""What every rule-pack model shares: strictness (a typo in ``cards/`` fails loudly, and the
validated pack is frozen) and the few field types more than one file uses."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# The confidence tier of a source, as the coding facts file grades it.
Tier = Literal[1, 2, 3]
# The month a source was read ("2026-11"): a card's explanation says how fresh its sources are.
ReadMonth = Annotated[str, Field(pattern=r"^\d{4}-\d{2}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
