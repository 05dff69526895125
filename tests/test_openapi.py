"""The OpenAPI 3.1 description (``cds_service/web/openapi.yaml``, served at ``/openapi.json``).

Three things keep it honest:

- it is a valid OpenAPI 3.1 document that describes exactly the app's routes (no drift);
- real answers (every fixture, and every documented status of every operation, errors included)
  conform to it: status, content type, required headers and body schema;
- Schemathesis, over real HTTP on loopback, sends generated requests (valid and invalid) to every
  operation and checks that none gets a 5xx and every answer conforms to the document.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
import requests
import schemathesis
import yaml
from flask import Flask
from helpers.apps import isolated_app
from helpers.corpus import EXPECTED, FIXTURE_NAMES, FIXTURES, load_fixture
from helpers.jwt_tokens import BASE_URL, ISSUER, SigningKey, TokenFactory, jwk_set, write_trust_file
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from schemathesis import Case
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.config import SchemathesisConfig
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.test import TestResponse

from cds_service.engine.rule_pack import load_pack
from cds_service.rulepack.loading import default_cards_dir
from cds_service.web import admission, ops, playground, rate_limit
from cds_service.web.app_state import service_state

DOC_URI = "urn:cds-20703:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DISCHARGE = "cpt20703-encounter-discharge"
STANDARD = "encounter-discharge--tibia-nonunion-removal.json"
QUESTIONNAIRE_ID = "cpt20703-removal-documentation"
FIXTURE_412 = "encounter-discharge--missing-required-prefetch.json"
_FLASK_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


# -- the document and validation against it ---------------------------------------------------


def _escape(token: str) -> str:
    """A JSON Pointer reference token."""
    return token.replace("~", "~0").replace("/", "~1")


class ApiDescription:
    """The served document, with response validation (3.1 dialect, ``$ref`` into the document)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(
            DOC_URI, DRAFT202012.create_resource(document)
        )

    def at(self, pointer: str) -> Any:
        node: Any = self.document
        for token in pointer.lstrip("/").split("/"):
            key = token.replace("~1", "/").replace("~0", "~")
            node = node[int(key)] if isinstance(node, list) else node[key]
        return node

    def follow(self, pointer: str) -> tuple[str, dict[str, Any]]:
        """The pointer and object at ``pointer``, following an OpenAPI ``$ref`` (not a schema)."""
        node = self.at(pointer)
        while "$ref" in node:
            pointer = node["$ref"].removeprefix("#")
            node = self.at(pointer)
        return pointer, node

    def operations(self) -> set[tuple[str, str]]:
        return {
            (path, method)
            for path, item in self.document["paths"].items()
            for method in item
            if method in HTTP_METHODS
        }

    def statuses(self, path: str, method: str) -> set[int]:
        return {int(code) for code in self.document["paths"][path][method]["responses"]}

    def schema_errors(self, pointer: str, instance: Any) -> list[str]:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{DOC_URI}#{pointer}"},
            registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message[:300]}"
            for error in validator.iter_errors(instance)
        ]

    def response_problems(self, pointer: str, response: TestResponse) -> list[str]:
        """Why ``response`` does not conform to the OpenAPI response object at ``pointer``."""
        pointer, definition = self.follow(pointer)
        problems: list[str] = []
        content = definition.get("content", {})
        mimetype = response.mimetype
        if not content:  # a response documented without a body (304) has none
            problems += ["a body where none is documented"] if response.get_data() else []
        elif mimetype is None or mimetype not in content:
            return [f"content type {mimetype} is not among {sorted(content)}"]
        else:
            body: Any = response.get_data(as_text=True)
            if mimetype.endswith("json"):
                body = json.loads(body)
            schema_pointer = f"{pointer}/content/{_escape(mimetype)}/schema"
            problems += [f"body {error}" for error in self.schema_errors(schema_pointer, body)]
        for name in definition.get("headers", {}):
            header_pointer, header = self.follow(f"{pointer}/headers/{_escape(name)}")
            value = response.headers.get(name)
            if value is None:
                if header.get("required"):
                    problems.append(f"required header {name} is missing")
                continue
            schema = header["schema"]
            coerced: Any = (
                int(value) if schema.get("type") == "integer" and value.isdigit() else value
            )
            problems += [
                f"header {name} {error}"
                for error in self.schema_errors(f"{header_pointer}/schema", coerced)
            ]
        return problems

    def assert_conforms(
        self, path: str, method: str, response: TestResponse, expected_status: int | None = None
    ) -> None:
        status = response.status_code
        if expected_status is not None:
            assert status == expected_status, response.get_data(as_text=True)[:500]
        assert status in self.statuses(path, method), f"{status} is not documented"
        pointer = f"/paths/{_escape(path)}/{method}/responses/{status}"
        assert self.response_problems(pointer, response) == []


# -- apps, the live server, and no traffic off the machine -------------------------------------


@pytest.fixture(scope="module")
def build_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Flask]]:
    """create_app with a fresh SQLite file, no CDS_* variable of the shell, FHIR calls refused."""
    apps: list[Flask] = []

    def build(**config: Any) -> Flask:
        app = isolated_app(tmp_path_factory.mktemp("db") / "cds.sqlite3", config)
        apps.append(app)
        return app

    yield build
    for app in apps:
        service_state(app).store.engine.dispose()


@pytest.fixture(scope="module")
def app(build_app: Callable[..., Flask]) -> Flask:
    return build_app(PUBLIC_BASE_URL="https://cds.example.org/base")


@pytest.fixture(scope="module")
def api(app: Flask) -> ApiDescription:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return ApiDescription(response.get_json())


def _is_loopback(host: Any) -> bool:
    if not isinstance(host, str | bytes):
        return True  # AF_UNIX paths and the like
    name = host.decode() if isinstance(host, bytes) else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _loopback_only() -> Iterator[None]:
    """Fail the module if anything in this process resolves or connects to a non-loopback host."""
    attempts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_loopback(host):
            attempts.append(f"resolve {host!r}")
            raise OSError("test_openapi: only loopback hosts may be reached")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback(host):
            attempts.append(f"connect {host!r}")
            raise OSError("test_openapi: only loopback hosts may be reached")
        real_connect(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket.socket, "connect", connect)
        yield
    assert attempts == [], f"non-loopback network use: {attempts[:5]}"


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass(frozen=True)
class LiveServer:
    url: str
    app: Flask


@pytest.fixture(scope="module")
def live_server(build_app: Callable[..., Flask]) -> Iterator[LiveServer]:
    """The app behind werkzeug's threaded server on 127.0.0.1 (a free port), its URL public."""
    server = make_server(
        "127.0.0.1", 0, lambda environ, start: [], threaded=True, request_handler=_QuietHandler
    )
    url = f"http://127.0.0.1:{server.server_port}"
    app = build_app(PUBLIC_BASE_URL=url)
    server.app = app
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield LiveServer(url, app)
    server.shutdown()
    thread.join(10)
    server.server_close()


# -- the document itself ----------------------------------------------------------------------


def test_served_document_is_valid_openapi_3_1(api: ApiDescription) -> None:
    assert api.document["openapi"].startswith("3.1.")
    validate_openapi(api.document)
    for name, schema in api.document["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            pytest.fail(f"components.schemas.{name}: {exc.message}")


def test_source_file_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(ops.OPENAPI_PATH.read_text(encoding="utf-8"))
    validate_openapi(document)


def test_servers_and_service_ids_come_from_the_deployment(app: Flask, api: ApiDescription) -> None:
    assert api.document["servers"] == [{"url": "https://cds.example.org/base"}]
    pack = service_state(app).pack
    service_ids = [service.id for service in pack.services]
    service_id = api.document["components"]["schemas"]["ServiceId"]
    assert (service_id["type"], service_id["enum"]) == ("string", service_ids)
    # Nothing else differs from the file.
    template = yaml.safe_load(ops.OPENAPI_PATH.read_text(encoding="utf-8"))
    template["servers"] = api.document["servers"]
    template["components"]["schemas"]["ServiceId"]["enum"] = service_ids
    assert api.document == template


def test_document_takes_any_url_and_service_ids() -> None:
    document = ops.openapi_document("https://cds.example.net", ["svc-a", "svc-b"])
    assert document["servers"] == [{"url": "https://cds.example.net"}]
    assert document["components"]["schemas"]["ServiceId"]["enum"] == ["svc-a", "svc-b"]
    validate_openapi(document)
    # The cached template is not modified.
    assert ops.openapi_document("https://x.example", [])["servers"] == [
        {"url": "https://x.example"}
    ]


def test_source_file_lists_the_packaged_service_ids() -> None:
    document = yaml.safe_load(ops.OPENAPI_PATH.read_text(encoding="utf-8"))
    pack = load_pack(default_cards_dir())
    assert document["components"]["schemas"]["ServiceId"]["enum"] == [
        service.id for service in pack.services
    ]


def test_version_is_the_package_version(api: ApiDescription) -> None:
    assert api.document["info"]["version"] == importlib.metadata.version("cds-20703")


def test_every_route_is_described_and_every_description_is_a_route(
    app: Flask, api: ApiDescription
) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _FLASK_PARAMETER.sub(r"{\1}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods or ()} - {
            (path, "head"),
            (path, "options"),
        }
    assert routes == api.operations()


def test_path_parameters_are_declared(api: ApiDescription) -> None:
    for path, item in api.document["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method in item.keys() & set(HTTP_METHODS):
            parameters = [
                api.follow(f"/paths/{_escape(path)}/{where}")[1]
                for where in [
                    *(f"parameters/{i}" for i in range(len(item.get("parameters", [])))),
                    *(
                        f"{method}/parameters/{i}"
                        for i in range(len(item[method].get("parameters", [])))
                    ),
                ]
            ]
            declared = {parameter["name"] for parameter in parameters if parameter["in"] == "path"}
            assert declared == names, (path, method)


def test_service_paths_use_the_service_id_schema(api: ApiDescription) -> None:
    for path in ("/cds-services/{service_id}", "/cds-services/{service_id}/feedback"):
        _, parameter = api.follow(f"/paths/{_escape(path)}/parameters/0")
        assert parameter["schema"] == {"$ref": "#/components/schemas/ServiceId"}


def test_playground_assets_are_the_served_ones(api: ApiDescription) -> None:
    parameter = api.document["paths"]["/playground/{asset}"]["get"]["parameters"][0]
    assert sorted(parameter["schema"]["enum"]) == sorted(playground.ASSETS)


def test_jwt_security_only_on_the_cds_hooks_paths(api: ApiDescription) -> None:
    assert api.document["security"] == []
    scheme = api.document["components"]["securitySchemes"]["cdsHooksJwt"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    for path, method in api.operations():
        security = api.document["paths"][path][method].get("security")
        if path.startswith("/cds-services"):
            assert security == [{"cdsHooksJwt": []}, {}], path
            assert 401 in api.statuses(path, method)
        else:
            assert security is None, path
            assert 401 not in api.statuses(path, method)


# -- real answers conform ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_answer_conforms(app: Flask, api: ApiDescription, name: str) -> None:
    expected = EXPECTED[name]
    response = app.test_client().post(
        f"/cds-services/{expected['service']}",
        data=(FIXTURES / name).read_bytes(),
        content_type="application/json",
        buffered=True,
    )
    api.assert_conforms("/cds-services/{service_id}", "post", response, expected["status"])


def test_fixture_requests_conform(api: ApiDescription) -> None:
    """The fixtures are requests the document calls valid (the request schema is not too strict)."""
    for name in FIXTURE_NAMES:
        errors = api.schema_errors("/components/schemas/HookRequest", load_fixture(name))
        assert errors == [], name


def test_request_examples_conform(api: ApiDescription) -> None:
    for path, method in api.operations():
        body = api.document["paths"][path][method].get("requestBody")
        for media_type, content in (body or {}).get("content", {}).items():
            for key, example in content.get("examples", {}).items():
                pointer = (
                    f"/paths/{_escape(path)}/{method}/requestBody/content/"
                    f"{_escape(media_type)}/schema"
                )
                assert api.schema_errors(pointer, example["value"]) == [], key


@dataclass
class Apps:
    """The apps a scenario may need, by kind (see ``_config``), each built once."""

    build: Callable[..., Flask]
    default: Flask
    directory: Path
    key: SigningKey = field(default_factory=SigningKey.ec384)  # the trusted client's key
    _cache: dict[str, Flask] = field(default_factory=dict)

    def get(self, kind: str) -> Flask:
        if kind == "default":
            return self.default
        if kind not in self._cache:
            self._cache[kind] = self.build(**self._config(kind))
            if kind.endswith("database-gone"):
                service_state(self._cache[kind]).store.engine.dispose()
                shutil.rmtree(self.directory / kind)
        return self._cache[kind]

    def _config(self, kind: str) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if kind.startswith("auth"):
            trust = write_trust_file(
                self.directory, [{"iss": ISSUER, "jwks": jwk_set(self.key)}], name=f"{kind}.json"
            )
            config |= {
                "AUTH": "required",
                "TRUSTED_CLIENTS": str(trust),
                "PUBLIC_BASE_URL": BASE_URL,
            }
        if kind.endswith("database-gone"):  # removed once the app has started
            (self.directory / kind).mkdir()
            config["DATABASE_URL"] = f"sqlite:///{self.directory / kind / 'cds.sqlite3'}"
        if kind == "small":
            config |= {"MAX_BODY_BYTES": "1024", "MAX_BUNDLE_ENTRIES": "1"}
        if kind == "no-playground":
            config["PLAYGROUND"] = "off"
        assert config, kind
        return config

    def token(self, path: str) -> dict[str, str]:
        """Headers with a valid JWT of the trusted client for ``path``."""
        return {"Authorization": f"Bearer {TokenFactory(self.key).token(path)}"}


@pytest.fixture(scope="module")
def apps(
    build_app: Callable[..., Flask], app: Flask, tmp_path_factory: pytest.TempPathFactory
) -> Apps:
    return Apps(build_app, app, tmp_path_factory.mktemp("apps"))


def _boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("simulated failure quoting patient pat-4f2a91")


FEEDBACK_BODY = {
    "feedback": [
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden",
            "overrideReason": {"reason": {"system": "https://example.org/r", "code": "x"}},
            "outcomeTimestamp": "2026-02-12T10:15:00Z",
        }
    ]
}


def _post(body: Any, content_type: str = "application/json") -> dict[str, Any]:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return {"method": "POST", "data": data, "content_type": content_type}


@dataclass(frozen=True)
class Scenario:
    """A request that gets ``status`` from ``path``/``method``, on one of the apps."""

    path: str
    method: str
    status: int
    url: str
    request: dict[str, Any]
    app: str = "default"
    broken_endpoint: str | None = None  # a view that raises (a 500)
    overloaded: bool = False  # every processing slot busy
    limited: bool = False  # the client over its rate limit
    note: str = ""

    @property
    def id(self) -> str:
        return f"{self.method.upper()} {self.path} {self.status} {self.note}".strip()


_SERVICE = "/cds-services/{service_id}"
_FEEDBACK = "/cds-services/{service_id}/feedback"
_TOO_MANY_ENTRIES = {  # under 1024 bytes, two entries: over CDS_MAX_BUNDLE_ENTRIES=1
    "hook": "order-sign",
    "hookInstance": "0f6bdf4e-7d0c-4b4e-9a44-4b8f0c1f8a11",
    "context": {
        "userId": "Practitioner/a",
        "patientId": "p",
        "draftOrders": {
            "resourceType": "Bundle",
            "entry": [{"resource": {"resourceType": "ServiceRequest"}}] * 2,
        },
    },
}

SCENARIOS = [
    Scenario("/cds-services", "get", 200, "/cds-services", {}),
    Scenario("/cds-services", "get", 401, "/cds-services", {}, app="auth"),
    Scenario("/cds-services", "get", 500, "/cds-services", {}, broken_endpoint="cds.discovery"),
    Scenario("/cds-services", "get", 503, "/cds-services", {}, app="auth-database-gone"),
    Scenario(_SERVICE, "post", 200, f"/cds-services/{DISCHARGE}", _post(load_fixture(STANDARD))),
    Scenario(
        _SERVICE,
        "post",
        200,
        f"/cds-services/{DISCHARGE}",
        _post(load_fixture(STANDARD)),
        app="auth",
        note="authenticated",
    ),
    Scenario(_SERVICE, "post", 400, f"/cds-services/{DISCHARGE}", _post("{not json")),
    Scenario(
        _SERVICE,
        "post",
        401,
        f"/cds-services/{DISCHARGE}",
        _post(load_fixture(STANDARD)) | {"headers": {"Authorization": "Bearer not.a.jwt"}},
        app="auth",
    ),
    Scenario(_SERVICE, "post", 404, "/cds-services/no-such-service", _post({})),
    Scenario(_SERVICE, "post", 412, f"/cds-services/{DISCHARGE}", _post(load_fixture(FIXTURE_412))),
    Scenario(
        _SERVICE,
        "post",
        413,
        "/cds-services/cpt20703-order-sign",
        _post(_TOO_MANY_ENTRIES),
        app="small",
        note="bundle entries",
    ),
    Scenario(
        _SERVICE,
        "post",
        413,
        f"/cds-services/{DISCHARGE}",
        _post(load_fixture(STANDARD)),
        app="small",
        note="body size",
    ),
    Scenario(_SERVICE, "post", 415, f"/cds-services/{DISCHARGE}", _post("{}", "text/plain")),
    Scenario(
        _SERVICE,
        "post",
        503,
        f"/cds-services/{DISCHARGE}",
        _post(load_fixture(STANDARD)),
        app="auth-database-gone",
        note="database",
    ),
    Scenario(
        _SERVICE,
        "post",
        503,
        f"/cds-services/{DISCHARGE}",
        _post(load_fixture(STANDARD)),
        overloaded=True,
        note="overloaded",
    ),
    Scenario(
        _SERVICE,
        "post",
        500,
        f"/cds-services/{DISCHARGE}",
        _post(load_fixture(STANDARD)),
        broken_endpoint="cds.call_service",
    ),
    *(
        Scenario(path, "post", 429, url, _post(body), limited=True)
        for path, url, body in (
            (_SERVICE, f"/cds-services/{DISCHARGE}", load_fixture(STANDARD)),
            (_FEEDBACK, f"/cds-services/{DISCHARGE}/feedback", FEEDBACK_BODY),
        )
    ),
    Scenario(_FEEDBACK, "post", 200, f"/cds-services/{DISCHARGE}/feedback", _post(FEEDBACK_BODY)),
    Scenario(
        _FEEDBACK,
        "post",
        503,
        f"/cds-services/{DISCHARGE}/feedback",
        _post(FEEDBACK_BODY),
        app="database-gone",
        note="database",
    ),
    Scenario(
        _FEEDBACK,
        "post",
        503,
        f"/cds-services/{DISCHARGE}/feedback",
        _post(FEEDBACK_BODY),
        overloaded=True,
        note="overloaded",
    ),
    Scenario(
        _FEEDBACK, "post", 400, f"/cds-services/{DISCHARGE}/feedback", _post({"feedback": []})
    ),
    Scenario(
        _FEEDBACK,
        "post",
        401,
        f"/cds-services/{DISCHARGE}/feedback",
        _post(FEEDBACK_BODY),
        app="auth",
    ),
    Scenario(_FEEDBACK, "post", 404, "/cds-services/nope/feedback", _post(FEEDBACK_BODY)),
    Scenario(
        _FEEDBACK,
        "post",
        413,
        f"/cds-services/{DISCHARGE}/feedback",
        _post({"feedback": [FEEDBACK_BODY["feedback"][0]] * 20}),
        app="small",
    ),
    Scenario(
        _FEEDBACK, "post", 415, f"/cds-services/{DISCHARGE}/feedback", _post(b"x", "text/csv")
    ),
    Scenario(
        _FEEDBACK,
        "post",
        500,
        f"/cds-services/{DISCHARGE}/feedback",
        _post(FEEDBACK_BODY),
        broken_endpoint="cds.feedback",
    ),
    *(
        Scenario(
            "/questionnaires/{questionnaire_id}",
            "get",
            status,
            f"/questionnaires/{name}",
            {},
            broken_endpoint="questionnaires.questionnaire" if status == 500 else None,
        )
        for status, name in ((200, QUESTIONNAIRE_ID), (404, "other"), (500, QUESTIONNAIRE_ID))
    ),
    *(
        Scenario(path, "get", status, path, {}, broken_endpoint=endpoint if status == 500 else None)
        for path, endpoint in (
            ("/healthz", "ops.healthz"),
            ("/readyz", "ops.readyz"),
            ("/metrics", "ops.prometheus_metrics"),
            ("/openapi.json", "ops.openapi"),
        )
        for status in (200, 500)
    ),
    Scenario("/readyz", "get", 503, "/readyz", {}, app="database-gone"),
    Scenario("/", "get", 200, "/", {}),
    Scenario("/", "get", 404, "/", {}, app="no-playground"),
    Scenario("/", "get", 500, "/", {}, broken_endpoint="playground.page"),
    Scenario(
        "/playground/{asset}",
        "get",
        200,
        "/playground/playground.js",
        {},
    ),
    Scenario("/playground/{asset}", "get", 404, "/playground/diff.js", {}, app="no-playground"),
    Scenario(
        "/playground/{asset}",
        "get",
        500,
        "/playground/diff.js",
        {},
        broken_endpoint="playground.asset",
    ),
    Scenario("/playground/fixtures", "get", 200, "/playground/fixtures", {}),
    Scenario("/playground/fixtures", "get", 404, "/playground/fixtures", {}, app="no-playground"),
    Scenario(
        "/playground/fixtures",
        "get",
        500,
        "/playground/fixtures",
        {},
        broken_endpoint="playground.fixtures",
    ),
    Scenario("/playground/fixtures/{name}", "get", 200, f"/playground/fixtures/{STANDARD}", {}),
    Scenario("/playground/fixtures/{name}", "get", 404, "/playground/fixtures/expected.json", {}),
    Scenario(
        "/playground/fixtures/{name}",
        "get",
        500,
        f"/playground/fixtures/{STANDARD}",
        {},
        broken_endpoint="playground.fixture",
    ),
    Scenario("/why/{name}", "get", 200, "/why/add-on-suggested?payer=medicare", {}, note="html"),
    Scenario("/why/{name}", "get", 200, "/why/orphan-add-on.json", {}, note="json"),
    Scenario(
        "/why/{name}", "get", 304, "/why/add-on-suggested", {"headers": {"If-None-Match": "*"}}
    ),
    Scenario("/why/{name}", "get", 404, "/why/no-such-finding", {}),
    Scenario("/why/{name}", "get", 404, "/why/orphan-add-on?payer=nobody", {}, note="payer"),
    Scenario(
        "/why/{name}", "get", 500, "/why/orphan-add-on", {}, broken_endpoint="explanation.page"
    ),
    Scenario("/why/style.css", "get", 200, "/why/style.css", {}),
    Scenario(
        "/why/style.css",
        "get",
        500,
        "/why/style.css",
        {},
        broken_endpoint="explanation.style_sheet",
    ),
]


def test_every_documented_status_has_a_scenario(api: ApiDescription) -> None:
    documented = {
        (path, method, status)
        for path, method in api.operations()
        for status in api.statuses(path, method)
    }
    assert {(s.path, s.method, s.status) for s in SCENARIOS} == documented


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.id)
def test_documented_response_is_real_and_conforms(
    apps: Apps, api: ApiDescription, scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = apps.get(scenario.app)
    if scenario.broken_endpoint:
        monkeypatch.setitem(app.view_functions, scenario.broken_endpoint, _boom)
    if scenario.overloaded:
        monkeypatch.setattr(admission.AdmissionGate, "enter", lambda gate, waited=0.0: False)
    if scenario.limited:
        monkeypatch.setattr(rate_limit.RateLimiter, "wait_seconds", lambda limiter, client: 7)
    request: dict[str, Any] = {"method": "GET", "buffered": True} | scenario.request
    if scenario.app.startswith("auth") and scenario.status != 401:
        request["headers"] = apps.token(scenario.url)
    response = app.test_client().open(scenario.url, **request)
    api.assert_conforms(scenario.path, scenario.method, response, scenario.status)
    if scenario.status >= 400:
        assert "pat-4f2a91" not in response.get_data(as_text=True)


def test_every_playground_asset_conforms(apps: Apps, api: ApiDescription) -> None:
    client = apps.get("default").test_client()
    for asset in sorted(playground.ASSETS):
        response = client.get(f"/playground/{asset}", buffered=True)
        api.assert_conforms("/playground/{asset}", "get", response, 200)


def test_every_playground_fixture_conforms(apps: Apps, api: ApiDescription) -> None:
    client = apps.get("default").test_client()
    for name in FIXTURE_NAMES:
        response = client.get(f"/playground/fixtures/{quote(name)}", buffered=True)
        api.assert_conforms("/playground/fixtures/{name}", "get", response, 200)


def test_missing_token_gets_a_bare_challenge(apps: Apps, api: ApiDescription) -> None:
    response = apps.get("auth").test_client().get("/cds-services")
    api.assert_conforms("/cds-services", "get", response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="cds-20703"'


def test_untrusted_token_gets_an_error_challenge(apps: Apps, api: ApiDescription) -> None:
    tokens = TokenFactory(SigningKey.ec384())  # a key the trust file does not hold
    response = (
        apps.get("auth")
        .test_client()
        .get("/cds-services", headers={"Authorization": f"Bearer {tokens.token('/cds-services')}"})
    )
    api.assert_conforms("/cds-services", "get", response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("DELETE", "/cds-services"),
        ("GET", f"/cds-services/{DISCHARGE}"),
        ("PUT", f"/cds-services/{DISCHARGE}/feedback"),
        ("POST", "/healthz"),
        ("PATCH", "/openapi.json"),
    ],
)
def test_wrong_method_conforms(apps: Apps, api: ApiDescription, method: str, url: str) -> None:
    response = apps.get("default").test_client().open(url, method=method)
    assert response.status_code == 405
    assert api.response_problems("/components/responses/MethodNotAllowed", response) == []


def test_unknown_path_conforms(apps: Apps, api: ApiDescription) -> None:
    response = apps.get("default").test_client().get("/no/such/path")
    assert response.status_code == 404
    assert api.response_problems("/components/responses/NotFound", response) == []


def _nested(levels: int) -> dict[str, Any]:
    """A FHIR extension whose objects and arrays nest exactly ``levels`` deep."""
    url = "https://example.org/x"
    if levels % 2:
        extension: dict[str, Any] = {"url": url, "valueString": "v"}
    else:
        extension = {"url": url, "valueCodeableConcept": {"text": "v"}}
    for _ in range((levels - 1) // 2):
        extension = {"url": url, "extension": [extension]}
    return extension


def _with_deep_extension(levels: int) -> dict[str, Any]:
    """The standard request with a Procedure extension making the body ``levels`` deep."""
    body = load_fixture(STANDARD)
    # body > prefetch > procedures > entry > [0] > resource > extension: 7 levels
    extension = _nested(levels - 7)
    body["prefetch"]["procedures"]["entry"][0]["resource"]["extension"] = [extension]
    return body


def _depth(value: Any) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(child) for child in children), default=0)
    return 0


def _feedback_with_extension(levels: int) -> dict[str, Any]:
    """A valid feedback body ``levels`` deep (body > feedback > [0] > extension: 3 levels)."""
    return {"feedback": [FEEDBACK_BODY["feedback"][0] | {"extension": _nested(levels - 3)}]}


@pytest.mark.parametrize(
    ("url", "body", "depth", "status"),
    [
        (f"/cds-services/{DISCHARGE}", _with_deep_extension(100), 100, 200),
        (f"/cds-services/{DISCHARGE}", _with_deep_extension(101), 101, 400),
        (f"/cds-services/{DISCHARGE}", _with_deep_extension(300), 300, 400),
        (f"/cds-services/{DISCHARGE}/feedback", _feedback_with_extension(100), 100, 200),
        (f"/cds-services/{DISCHARGE}/feedback", _feedback_with_extension(101), 101, 400),
    ],
    ids=["call 100", "call 101", "call 300", "feedback 100", "feedback 101"],
)
def test_deeply_nested_body_is_refused_not_a_crash(
    app: Flask, api: ApiDescription, url: str, body: dict[str, Any], depth: int, status: int
) -> None:
    """FHIR parsing, copying and card serialisation recurse: a deep body must be 400, not 500."""
    assert _depth(body) == depth
    response = app.test_client().post(url, json=body)
    path = "/cds-services/{service_id}" + ("/feedback" if url.endswith("feedback") else "")
    api.assert_conforms(path, "post", response, status)
    if status == 400:
        assert "levels deep" in response.get_json()["issue"][0]["diagnostics"]


# -- Schemathesis over real HTTP --------------------------------------------------------------

# Seeded and derandomized (the same cases every run), no example database, bounded: about 1 200
# requests in all (examples, coverage and fuzzing phases, valid and invalid data), 10 to 25 s on
# two shared cores. "too_slow" is about generating data on a busy machine, not about the service.
SCHEMATHESIS_CONFIG = {
    "seed": 20703,
    "suppress-health-check": ["too_slow"],
    "generation": {
        "mode": "all",
        "max-examples": 50,
        "deterministic": True,
        "database": "none",
    },
    "phases": {"stateful": {"enabled": False}},
    "request-timeout": 20,
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
    allow_header_conformance,
]


# The document is built when the module is imported: loading it from the live server would need a
# schema from a fixture (``schemathesis.pytest.from_fixture``), which fails under pytest 9 (it
# sets ``Function._nodeid``). The requests go to the live server, whose /openapi.json is checked
# to be this very document (apart from ``servers``) below.
SCHEMA_DOCUMENT = ops.openapi_document(
    "http://127.0.0.1:1", [service.id for service in load_pack(default_cards_dir()).services]
)
schema = schemathesis.openapi.from_dict(
    SCHEMA_DOCUMENT, config=SchemathesisConfig.from_dict(SCHEMATHESIS_CONFIG)
)


@schema.parametrize()
def test_api_conforms_under_generated_requests(case: Case[Any], live_server: LiveServer) -> None:
    case.call_and_validate(base_url=live_server.url, checks=CHECKS)


def test_live_server_serves_the_tested_document(live_server: LiveServer) -> None:
    document = requests.get(f"{live_server.url}/openapi.json", timeout=10).json()
    assert document["servers"] == [{"url": live_server.url}]
    assert document == SCHEMA_DOCUMENT | {"servers": document["servers"]}
