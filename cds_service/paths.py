"""Where the service's data directories are: the copy packaged in the wheel, else the checkout.

One precedence for every directory (``cards/``, ``fhir_fixtures/``, ``fhir_sandbox/``): a wheel
carries its own copy under the package; an editable install or a checkout has none, and reads the
repository's top-level directory. Imports nothing from the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def data_dir(name: str) -> Path:
    """The packaged ``name`` directory when the wheel has one, else the checkout's."""
    packaged = Path(str(resources.files("cds_service"))) / name
    if packaged.is_dir():
        return packaged
    return CHECKOUT / name
