"""Turn the labelled cases of ``eval/cases/*.yaml`` into CDS Hooks 2.0 request bodies.

A case describes one clinical situation compactly (procedures, devices, draft claims, conditions,
the operative note, the payer); :func:`build_request` expands it into the envelope and prefetch
keys the fixtures use (``fhir_fixtures/README.md``): FHIR R4 resources in ``searchset`` Bundles,
the operative note as a DocumentReference (LOINC 11504-8, ``text/plain``, base64 ``data``), and
for order-sign the draft resources in ``context.draftOrders``. Everything in it is fictional.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EVAL_DIR = Path(__file__).resolve().parent
CASES_DIR = EVAL_DIR / "cases"
FHIR_BASE = "http://127.0.0.1:8081/fhir"

CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
NPI = "http://hl7.org/fhir/sid/us-npi"
REMOVAL = "129303008"
IMPLANTATION = "129336009"
HCPCS_MODIFIERS = frozenset({"RT", "LT", "AS", "TC"})

ENCOUNTER_DISCHARGE_KEYS = (
    "encounter",
    "procedures",
    "serviceRequests",
    "claims",
    "devices",
    "conditions",
    "documents",
    "coverage",
    "questionnaireResponses",
)
ORDER_SIGN_KEYS = ("procedures", "devices", "claims", "conditions", "coverage")

# Practitioners are references only (display and NPI), as in the fixtures.
PRACTITIONERS: dict[str, tuple[str, str]] = {
    "ambrose": ("Dr. Celeste Ambrose, MD", "1740293856"),
    "hollis": ("Dr. Gregor Hollis, MD", "1295847362"),
    "okoro": ("Dr. Adaeze Okoro, MD", "1568203947"),
    "varga": ("Dr. Istvan Varga, DO", "1821937465"),
    "pike": ("Jordan Pike, PA-C", "1093847261"),
}

# payer key -> (payor display, Coverage.type display, plan class name)
PAYERS: dict[str, tuple[str, str, str]] = {
    "medicare": ("Centers for Medicare & Medicaid Services", "Medicare FFS", "Medicare Part B"),
    "unitedhealthcare": ("UnitedHealthcare", "Commercial managed care", "UHC Choice Plus"),
    "aetna": ("Aetna", "Commercial managed care", "Aetna Open Access"),
    "cigna": ("Cigna Healthcare", "Commercial managed care", "Cigna OAP"),
    "bcbs-nc": (
        "Blue Cross and Blue Shield of North Carolina",
        "Commercial managed care",
        "Blue Options PPO",
    ),
    "bcbs-other": ("Blue Cross Blue Shield of Illinois", "Commercial managed care", "BlueEdge"),
    "general": ("Tamarack Valley Health Cooperative", "Commercial managed care", "Tamarack Gold"),
}


@dataclass(frozen=True)
class Case:
    """One labelled case as written in ``eval/cases/<category>.yaml``."""

    data: dict[str, Any]
    source: Path

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def category(self) -> str:
        return str(self.data["category"])

    @property
    def hook(self) -> str:
        return str(self.data["hook"])

    @property
    def expected_findings(self) -> frozenset[str]:
        return frozenset(self.data["expected"]["findings"])

    @property
    def expected_documented(self) -> frozenset[str] | None:
        """Documented keys, or None when the case judges no documentation."""
        documented = self.data["expected"].get("documented")
        return None if documented is None else frozenset(documented)

    @property
    def not_judged(self) -> frozenset[str]:
        """Documentation keys the case deliberately does not score (see eval/README.md)."""
        return frozenset(self.data["expected"].get("not_judged", []))

    @property
    def has_assistant_modifier(self) -> bool:
        return any(
            modifier in {"80", "81", "82", "AS"}
            for claim in self.data.get("claims", [])
            for line in claim.get("lines", [])
            for modifier in line.get("mods", [])
        )


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every case of every ``*.yaml`` file, in file and then case order."""
    cases: list[Case] = []
    for path in sorted(directory.glob("*.yaml")):
        loaded = yaml.safe_load(path.read_text())
        for data in loaded["cases"]:
            cases.append(Case(data, path))
    return cases


def _slug(case_id: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in case_id.lower())[:40]


def _stable_uuid(text: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16], version=4))


def _ref(kind: str, ident: str, display: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"reference": f"{kind}/{ident}"}
    if display:
        ref["display"] = display
    return ref


def _practitioner(key: str) -> dict[str, Any]:
    display, _npi = PRACTITIONERS[key]
    return _ref("Practitioner", f"prac-{key}", display)


def _searchset(kind: str, query: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{FHIR_BASE}/{kind}?{query}"}],
    }
    if resources:
        bundle["entry"] = [
            {
                "fullUrl": f"{FHIR_BASE}/{res['resourceType']}/{res['id']}",
                "resource": res,
                "search": {"mode": "match"},
            }
            for res in resources
        ]
    return bundle


def _icd(code: str) -> dict[str, Any]:
    return {"coding": [{"system": ICD10CM, "code": code}]}


def _cpt(code: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": CPT, "code": code}]}
    if text:
        concept["text"] = text
    return concept


def _modifier(code: str) -> dict[str, Any]:
    system = HCPCS if code in HCPCS_MODIFIERS else CPT
    return {"coding": [{"system": system, "code": code}]}


class _Builder:
    """Builds one case's resources; ids derive from the case id so cases never share one."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.d = case.data
        self.slug = _slug(case.id)
        self.patient = f"pat-{self.slug}"
        self.encounter = f"enc-{self.slug}"
        self.date = str(self.d["date"])
        self.surgeon = str(self.d.get("surgeon", "ambrose"))
        self.coverage_id = f"cov-{self.slug}"
        in_session = case.hook == "encounter-discharge" or bool(self.d.get("context_encounter"))
        self.default_encounter = "session" if in_session else "none"

    def subject(self) -> dict[str, Any]:
        return _ref("Patient", self.patient)

    def encounter_ref(self, which: Any) -> dict[str, Any] | None:
        if which is None or which is True or which == "session":
            return _ref("Encounter", self.encounter)
        if which is False or which == "none":
            return None
        return _ref("Encounter", f"enc-{self.slug}-{which}")

    # -- resources -----------------------------------------------------------------------------
    def procedure(self, index: int, spec: dict[str, Any]) -> dict[str, Any]:
        proc: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": f"proc-{self.slug}-{spec.get('id', index)}",
            "status": spec.get("status", "completed"),
            "category": {
                "coding": [{"system": SNOMED, "code": "387713003", "display": "Surgical procedure"}]
            },
            "code": _cpt(spec["code"], spec.get("text"))
            if spec.get("code")
            else {"text": spec["text"]},
            "subject": self.subject(),
        }
        enc = self.encounter_ref(spec.get("encounter", self.default_encounter))
        if enc is not None:
            proc["encounter"] = enc
        proc["performedDateTime"] = (
            f"{spec.get('date', self.date)}T{spec.get('time', '08:30')}:00-05:00"
        )
        performer = str(spec.get("performer", self.surgeon))
        proc["performer"] = [
            {
                "function": {
                    "coding": [{"system": SNOMED, "code": "304292004", "display": "Surgeon"}]
                },
                "actor": _practitioner(performer),
            }
        ]
        if spec.get("reason"):
            proc["reasonCode"] = [_icd(code) for code in spec["reason"]]
        if spec.get("body_site"):
            proc["bodySite"] = [{"text": spec["body_site"]}]
        notes = spec.get("note")
        if notes:
            proc["note"] = [
                {"text": text} for text in ([notes] if isinstance(notes, str) else notes)
            ]
        focal = spec.get("focal")
        if focal:
            action = IMPLANTATION if focal.get("action") == "implantation" else REMOVAL
            display = "Implantation - action" if action == IMPLANTATION else "Removal - action"
            proc["focalDevice"] = [
                {
                    "action": {"coding": [{"system": SNOMED, "code": action, "display": display}]},
                    "manipulated": _ref("Device", f"dev-{self.slug}-{focal['device']}"),
                }
            ]
        return proc

    def device(self, spec: dict[str, Any]) -> dict[str, Any]:
        dev: dict[str, Any] = {
            "resourceType": "Device",
            "id": f"dev-{self.slug}-{spec['id']}",
            "status": spec.get("status", "inactive"),
        }
        if spec.get("udi"):
            dev["udiCarrier"] = [
                {"deviceIdentifier": spec["udi"], "carrierHRF": f"(01){spec['udi']}"}
            ]
        for field in ("manufacturer", "lotNumber", "modelNumber"):
            key = {"lotNumber": "lot", "modelNumber": "model"}.get(field, field)
            if spec.get(key):
                dev[field] = str(spec[key])
        if spec.get("name"):
            dev["deviceName"] = [{"name": spec["name"], "type": "user-friendly-name"}]
        if spec.get("type"):
            dev["type"] = {"text": spec["type"]}
        dev["patient"] = self.subject()
        if spec.get("note"):
            dev["note"] = [{"text": spec["note"]}]
        return dev

    def claim(self, index: int, spec: dict[str, Any]) -> dict[str, Any]:
        team_keys = spec.get("care_team", [self.surgeon])
        care_team = [
            {
                "sequence": seq,
                "provider": {
                    **_practitioner(key),
                    "identifier": {"system": NPI, "value": PRACTITIONERS[key][1]},
                },
                "responsible": seq == 1,
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/claimcareteamrole",
                            "code": "primary" if seq == 1 else "assist",
                        }
                    ]
                },
            }
            for seq, key in enumerate(team_keys, start=1)
        ]
        diagnoses = spec.get("diagnoses", [])
        items = []
        dates = []
        for seq, line in enumerate(spec["lines"], start=1):
            day = str(line.get("date", self.date))
            dates.append(day)
            item: dict[str, Any] = {
                "sequence": seq,
                "careTeamSequence": [int(line.get("care", 1))],
                "productOrService": _cpt(str(line["code"])),
                "servicedDate": day,
                "quantity": {"value": int(line.get("units", 1))},
                "unitPrice": {"value": 500.0, "currency": "USD"},
                "net": {"value": 500.0 * int(line.get("units", 1)), "currency": "USD"},
            }
            pointers = line.get("dx", list(range(1, len(diagnoses) + 1)))
            if pointers:
                item["diagnosisSequence"] = [int(p) for p in pointers]
            if line.get("mods"):
                item["modifier"] = [_modifier(str(code)) for code in line["mods"]]
            which = line.get("encounter", spec.get("encounter", self.default_encounter))
            enc = self.encounter_ref(which)
            if enc is not None:
                item["encounter"] = [enc]
            items.append(item)
        claim: dict[str, Any] = {
            "resourceType": "Claim",
            "id": f"claim-{self.slug}-{index}",
            "status": "draft",
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                        "code": "professional",
                    }
                ]
            },
            "use": "claim",
            "patient": self.subject(),
            "billablePeriod": {"start": min(dates), "end": max(dates)},
            "created": max(dates),
            "provider": {
                "reference": "Organization/org-eval-ortho",
                "display": "Riverbend Orthopaedic Group",
                "identifier": {"system": NPI, "value": "1609384752"},
            },
            "priority": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/processpriority",
                        "code": "normal",
                    }
                ]
            },
            "careTeam": care_team,
            "insurance": [
                {"sequence": 1, "focal": True, "coverage": _ref("Coverage", self.coverage_id)}
            ],
            "item": items,
        }
        if diagnoses:
            claim["diagnosis"] = [
                {"sequence": seq, "diagnosisCodeableConcept": _icd(code)}
                for seq, code in enumerate(diagnoses, start=1)
            ]
        return claim

    def condition(self, index: int, code: str) -> dict[str, Any]:
        cond: dict[str, Any] = {
            "resourceType": "Condition",
            "id": f"cond-{self.slug}-{index}",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": _icd(code),
            "subject": self.subject(),
            "recordedDate": self.date,
        }
        if self.case.hook == "encounter-discharge":
            cond["encounter"] = _ref("Encounter", self.encounter)
        return cond

    def service_request(self, index: int, spec: dict[str, Any]) -> dict[str, Any]:
        req: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": f"sr-{self.slug}-{index}",
            "status": spec.get(
                "status", "draft" if self.case.hook == "order-sign" else "completed"
            ),
            "intent": "order",
            "code": _cpt(str(spec["code"]), spec.get("text")),
            "subject": self.subject(),
            "occurrenceDateTime": str(spec.get("date", self.date)),
            "requester": _practitioner(self.surgeon),
        }
        enc = self.encounter_ref(spec.get("encounter", self.default_encounter))
        if enc is not None:
            req["encounter"] = enc
        if spec.get("body_site"):
            req["bodySite"] = [{"text": spec["body_site"]}]
        if spec.get("note"):
            req["note"] = [{"text": spec["note"]}]
        return req

    def coverage(self) -> dict[str, Any]:
        payor, type_display, plan = PAYERS[str(self.d.get("payer", "medicare"))]
        return {
            "resourceType": "Coverage",
            "id": self.coverage_id,
            "status": "active",
            "type": {"text": type_display},
            "subscriberId": f"EV{int(hashlib.sha256(self.slug.encode()).hexdigest()[:8], 16):010d}",
            "beneficiary": self.subject(),
            "payor": [{"display": payor}],
            "class": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                                "code": "plan",
                            }
                        ]
                    },
                    "value": plan,
                    "name": plan,
                }
            ],
        }

    def operative_note(self) -> dict[str, Any]:
        text = str(self.d["note"])
        doc: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "id": f"doc-{self.slug}",
            "status": "current",
            "docStatus": "final",
            "type": {
                "coding": [
                    {"system": LOINC, "code": "11504-8", "display": "Surgical operation note"}
                ]
            },
            "subject": self.subject(),
            "date": f"{self.date}T14:00:00-05:00",
            "author": [_practitioner(self.surgeon)],
            "description": "Operative report",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain",
                        "language": "en-US",
                        "data": base64.b64encode(text.encode()).decode(),
                    }
                }
            ],
        }
        if self.case.hook == "encounter-discharge":
            doc["context"] = {"encounter": [_ref("Encounter", self.encounter)]}
        return doc

    def encounter_resource(self) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "id": self.encounter,
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": str(self.d.get("encounter_class", "IMP")),
            },
            "subject": self.subject(),
            "period": {"start": f"{self.date}T06:00:00-05:00"},
        }

    # -- the request ---------------------------------------------------------------------------
    def request(self) -> dict[str, Any]:
        d = self.d
        procedures = [self.procedure(i, p) for i, p in enumerate(d.get("procedures", []), 1)]
        draft_procedures = [
            proc
            for proc, spec in zip(procedures, d.get("procedures", []), strict=True)
            if spec.get("draft")
        ]
        recorded = [proc for proc in procedures if proc not in draft_procedures]
        devices = [self.device(spec) for spec in d.get("devices", [])]
        claims = [self.claim(i, c) for i, c in enumerate(d.get("claims", []), 1)]
        draft_claims = [
            claim
            for claim, spec in zip(claims, d.get("claims", []), strict=True)
            if self.case.hook == "order-sign" and not spec.get("prefetch")
        ]
        prefetch_claims = [claim for claim in claims if claim not in draft_claims]
        conditions = [self.condition(i, code) for i, code in enumerate(d.get("conditions", []), 1)]
        requests = [self.service_request(i, s) for i, s in enumerate(d.get("orders", []), 1)]
        pid = self.patient
        if self.case.hook == "encounter-discharge":
            documents = [self.operative_note()] if d.get("note") else []
            prefetch: dict[str, Any] = {
                "encounter": self.encounter_resource(),
                "procedures": _searchset("Procedure", f"patient={pid}", procedures),
                "serviceRequests": _searchset("ServiceRequest", f"patient={pid}", requests),
                "claims": _searchset("Claim", f"patient={pid}&status=draft", claims),
                "devices": _searchset("Device", f"patient={pid}", devices),
                "conditions": _searchset(
                    "Condition", f"patient={pid}&encounter={self.encounter}", conditions
                ),
                "documents": _searchset(
                    "DocumentReference", f"patient={pid}&encounter={self.encounter}", documents
                ),
                "coverage": _searchset(
                    "Coverage", f"patient={pid}&status=active", [self.coverage()]
                ),
                "questionnaireResponses": _searchset(
                    "QuestionnaireResponse", f"patient={pid}&encounter={self.encounter}", []
                ),
            }
            context: dict[str, Any] = {
                "userId": f"Practitioner/prac-{self.surgeon}",
                "patientId": pid,
                "encounterId": self.encounter,
            }
        else:
            prefetch = {
                "procedures": _searchset("Procedure", f"patient={pid}", recorded),
                "devices": _searchset("Device", f"patient={pid}", devices),
                "claims": _searchset("Claim", f"patient={pid}&status=draft", prefetch_claims),
                "conditions": _searchset("Condition", f"patient={pid}", conditions),
                "coverage": _searchset(
                    "Coverage", f"patient={pid}&status=active", [self.coverage()]
                ),
            }
            entries = [*requests, *draft_procedures, *draft_claims]
            context = {"userId": f"Practitioner/prac-{self.surgeon}", "patientId": pid}
            if d.get("context_encounter"):
                context["encounterId"] = self.encounter
            context["draftOrders"] = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": res} for res in entries],
            }
        return {
            "hookInstance": _stable_uuid(self.case.id),
            "hook": self.case.hook,
            "fhirServer": FHIR_BASE,
            "context": context,
            "prefetch": prefetch,
        }


def build_request(case: Case) -> dict[str, Any]:
    """The CDS Hooks request body for ``case``."""
    return _Builder(case).request()


def iter_resources(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every FHIR resource of a request body (prefetch values, Bundle entries, draftOrders)."""
    values: list[Any] = list(body["prefetch"].values())
    if "draftOrders" in body["context"]:
        values.append(body["context"]["draftOrders"])
    for value in values:
        if not isinstance(value, dict):
            continue
        yield value
        for entry in value.get("entry", []):
            yield entry["resource"]
