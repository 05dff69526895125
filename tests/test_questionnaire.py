"""The documentation Questionnaire: served at its canonical URL, answers count as documentation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.R4B.questionnaire import Questionnaire
from flask.testing import FlaskClient
from helpers.corpus import load_fixture
from helpers.engine import by_code, facts_for, findings_for

from cds_service.rulepack.models import RulePack

MISSING = "encounter-discharge--missing-documentation.json"


def test_questionnaire_is_served_at_its_canonical(client: FlaskClient, pack: RulePack) -> None:
    """GET /questionnaires/{id} returns a valid R4 Questionnaire whose url is that address."""
    response = client.get("/questionnaires/cpt20703-removal-documentation")
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+json"
    questionnaire = Questionnaire.model_validate(response.get_json())
    assert (
        questionnaire.url == "http://127.0.0.1:8080/questionnaires/cpt20703-removal-documentation"
    )
    keys = [element.key for element in pack.coding.documentation]
    assert questionnaire.item is not None
    assert [item.linkId for item in questionnaire.item] == keys


def test_unknown_questionnaire_is_404(client: FlaskClient) -> None:
    """Only the shipped Questionnaire is served."""
    response = client.get("/questionnaires/other")
    assert response.status_code == 404
    assert response.get_json()["resourceType"] == "OperationOutcome"


def answers(body: dict[str, Any], keys: list[str], status: str = "completed") -> dict[str, Any]:
    """The request with a QuestionnaireResponse answering ``keys``."""
    changed = copy.deepcopy(body)
    changed["prefetch"]["questionnaireResponses"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "QuestionnaireResponse",
                    "id": "qr-1",
                    "questionnaire": "http://127.0.0.1:8080/questionnaires/cpt20703-removal-documentation",
                    "status": status,
                    "subject": {"reference": f"Patient/{body['context']['patientId']}"},
                    "encounter": {"reference": f"Encounter/{body['context']['encounterId']}"},
                    "item": [
                        {"linkId": key, "answer": [{"valueString": "Documented in addendum."}]}
                        for key in keys
                    ],
                }
            }
        ],
    }
    return changed


def test_answers_count_as_documentation(pack: RulePack) -> None:
    """Answered keys leave the missing list; unanswered ones stay."""
    body = load_fixture(MISSING)
    before = by_code(findings_for(body, pack))["documentation-missing"].missing_documentation
    answered = answers(body, ["removal-reason", "estimated-blood-loss"])
    after = by_code(findings_for(answered, pack))["documentation-missing"].missing_documentation
    assert set(before) - set(after) == {"removal-reason", "estimated-blood-loss"}
    assert facts_for(answered, pack).answered == {"removal-reason", "estimated-blood-loss"}


@pytest.mark.parametrize("status", ["in-progress", "entered-in-error"])
def test_unfinished_answers_do_not_count(pack: RulePack, status: str) -> None:
    """Only completed or amended responses count."""
    body = answers(load_fixture(MISSING), ["removal-reason"], status=status)
    assert facts_for(body, pack).answered == frozenset()


def test_documentation_task_asks_the_surgeon(pack: RulePack) -> None:
    """The Task is for the patient, focused on the removal, owned by its performer."""
    body = load_fixture(MISSING)
    finding = by_code(findings_for(body, pack))["documentation-missing"]
    task = finding.new_resource
    assert task is not None
    assert task["for"] == {"reference": f"Patient/{body['context']['patientId']}"}
    assert task["focus"]["reference"].startswith("Procedure/")
    assert task["owner"]["reference"].startswith(("Practitioner/", "PractitionerRole/"))
    assert task["encounter"] == {"reference": f"Encounter/{body['context']['encounterId']}"}
    assert "Reason for removal" in task["description"]


CANONICAL = "http://127.0.0.1:8080/questionnaires/cpt20703-removal-documentation"


@pytest.mark.parametrize(
    ("questionnaire", "encounter", "counted"),
    [
        (CANONICAL, None, True),
        (CANONICAL + "|1", None, True),  # a |version suffix is not part of the canonical
        (CANONICAL + "|2.0.1", None, True),
        (CANONICAL, "Encounter/another-visit", False),
        ("https://cds-staging.example.org/questionnaires/cpt20703-removal-documentation", None, False),
        (CANONICAL + "-v2", None, False),
        ("https://ehr.example.org/fhir/Questionnaire/op-note-addendum|3", None, False),
    ],
)  # fmt: skip
def test_only_responses_to_this_questionnaire_for_this_encounter_count(
    pack: RulePack, questionnaire: str, encounter: str | None, counted: bool
) -> None:
    """The response's questionnaire (without |version) must be this server's canonical, and
    its encounter, when it names one, the context encounter."""
    body = answers(load_fixture(MISSING), ["removal-reason"])
    response = body["prefetch"]["questionnaireResponses"]["entry"][0]["resource"]
    response["questionnaire"] = questionnaire
    if encounter is not None:
        response["encounter"] = {"reference": encounter}
    assert facts_for(body, pack).answered == ({"removal-reason"} if counted else frozenset())


def test_questionnaire_fixture_answers_reduce_the_missing_list(pack: RulePack) -> None:
    """The fixture's versioned response documents three keys; its unanswered item does not."""
    body = load_fixture("encounter-discharge--questionnaire-answers.json")
    assert facts_for(body, pack).answered == {
        "removal-reason",
        "estimated-blood-loss",
        "complications",
    }
    finding = by_code(findings_for(body, pack))["documentation-missing"]
    assert finding.missing_documentation == ("device-identification", "extraction-method")
    assert finding.variables["missing_count"] == "2"
