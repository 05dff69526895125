"""Mutated fixtures never crash the service: every answer is a card list or an OperationOutcome."""

from __future__ import annotations

import copy
import json
from typing import Any

from conftest import EXPECTED, FIXTURE_NAMES, load_fixture
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.json_discipline import violations

REPLACEMENTS = st.sampled_from(
    [None, "", "x" * 300, 0, -1, 10**20, 1.5, True, [], {}, [None], {"resourceType": "Bundle"}]
)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``document``."""
    found: list[tuple[Any, ...]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            found.append((*prefix, key))
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found.append((*prefix, index))
            found.extend(paths(value, (*prefix, index)))
    return found


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A fixture with a few values replaced by ill-typed ones or removed."""
    name = draw(st.sampled_from(FIXTURE_NAMES))
    body = copy.deepcopy(load_fixture(name))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        candidates = paths(body)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent: Any = body
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(REPLACEMENTS)
    return EXPECTED[name]["service"], body


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutated_requests())
def test_mutated_requests_never_crash(
    client: FlaskClient, case: tuple[str, dict[str, Any]]
) -> None:
    """No 5xx; 200 answers obey the JSON rules; errors are OperationOutcomes."""
    service_id, body = case
    response = client.post(
        f"/cds-services/{service_id}", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code in (200, 400, 412), response.get_data(as_text=True)
    payload = response.get_json()
    if response.status_code == 200:
        assert violations(payload) == []
        for card in payload["cards"]:
            assert len(card["summary"]) < 140
    else:
        assert payload["resourceType"] == "OperationOutcome"
