"""The local FHIR sandbox as the tests use it: a real FHIR R4 server (Medplum) on loopback.

The launcher is the package's (``cds_service/cli/fhir_sandbox.py``); ``MedplumServer`` starts it
the way the tests need it, on a free port with its npm packages installed when missing::

    with MedplumServer([FIXTURES / "encounter-discharge--tibia-nonunion-removal.json"]) as fhir:
        requests.get(f"{fhir.base_url}/Procedure?patient=pat-4f2a91", timeout=5)

Starting it needs ``node`` (>= 20) on PATH; without it ``NodeUnavailable`` is raised, and tests call
``skip_or_fail_without_node`` to skip (or fail, when the ``CI`` variable is set).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from cds_service.cli.fhir_sandbox import (
    STARTUP_TIMEOUT_S,
    FhirSandbox,
    NodeUnavailable,
    ensure_packages,
    find_node,
)

__all__ = [
    "MedplumServer",
    "NodeUnavailable",
    "require_node_and_packages",
    "skip_or_fail_without_node",
]


def skip_or_fail_without_node(exc: NodeUnavailable) -> NoReturn:
    """Skip the calling test (fixture) for lack of Node.js, or fail it when ``CI`` is set."""
    reason = f"the Medplum test FHIR server needs Node.js: {exc}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


def require_node_and_packages() -> None:
    """Node.js >= 20 and the sandbox's npm packages, installed if missing (NodeUnavailable)."""
    find_node()
    ensure_packages()


class MedplumServer(FhirSandbox):
    """The sandbox on a free port, its packages installed if missing; a context manager."""

    def __init__(
        self, seed_files: Sequence[Path], *, startup_timeout: float = STARTUP_TIMEOUT_S
    ) -> None:
        super().__init__(seed_files, install=True, startup_timeout=startup_timeout)
