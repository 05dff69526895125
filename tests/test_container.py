"""The Dockerfile and docker-compose.yml: their structure, and the image's install steps replayed.

No Docker engine runs here, so the image is never built. Instead the instructions are parsed and
checked (pinned bases, non-root user, health check, no secrets, COPY of files that exist), and the
RUN steps are replayed on this machine: the build stage's in a fresh virtualenv on a copy of
exactly what the Dockerfile COPYs, the runtime stage's pip install in another fresh virtualenv.
That virtualenv then runs ``cds-service check-cards``, and ``cds-service serve`` with the image's
CMD and ENV, which the HEALTHCHECK command must find healthy.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from helpers.corpus import ROOT
from helpers.jwt_tokens import ISSUER, SigningKey, jwk_set, write_trust_file

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
EXACT_VERSION_TAG = re.compile(r"^\d+\.\d+\.\d+(?:-[a-z0-9.-]+)?$")
POSTGRES_VERSION_TAG = re.compile(r"^\d+\.\d+(?:-[a-z]+)?$")  # major.minor is exact since 10
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|(?:^|_)KEY(?:$|_)|CREDENTIAL", re.I)
PLACEHOLDER = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")
PIP_TIMEOUT_S = 600
START_TIMEOUT_S = 60


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array form of CMD/ENTRYPOINT/HEALTHCHECK CMD (the shell form is refused)."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :]
        value = json.loads(text.strip())
        assert isinstance(value, list), f"line {self.line}: use the JSON (exec) form"
        assert all(isinstance(item, str) for item in value)
        return value

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """``--name=value`` options and the remaining words."""
        words = shlex.split(self.arguments)
        options = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            options[name] = value
        return options, words


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def environment(self) -> dict[str, str]:
        """The ENV of this stage (``KEY=value`` pairs, shell-quoted values)."""
        variables: dict[str, str] = {}
        for item in self.all("ENV"):
            for word in shlex.split(item.arguments):
                name, equals, value = word.partition("=")
                assert equals, f"line {item.line}: use ENV KEY=value"
                variables[name] = value
        return variables

    def workdir(self) -> PurePosixPath:
        directories = self.all("WORKDIR")
        return PurePosixPath(directories[-1].arguments) if directories else PurePosixPath("/")


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), start)
        logical = ""
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"line {start}: FROM image [AS name]"
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"line {start}: {instruction.keyword} before FROM"
            stages[-1].instructions.append(instruction)
    assert not logical, "the Dockerfile ends inside a continued line"
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
BUILD, RUNTIME = STAGES[0], STAGES[-1]
COMPOSE_DOCUMENT: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
IGNORED = [
    line.strip()
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#")
]


def ignored(relative: str) -> bool:
    """Whether .dockerignore keeps ``relative`` (a context path) out of the build context."""
    for pattern in IGNORED:
        if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, f"{pattern}/*"):
            return True
        if pattern.startswith("**/"):
            tail = pattern[3:]
            parts = relative.split("/")
            if any(fnmatch.fnmatch(part, tail) for part in parts):
                return True
    return False


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """The context paths and the destination of a COPY from the build context."""
    options, words = instruction.flags()
    assert "from" not in options
    assert len(words) >= 2, f"line {instruction.line}: COPY SRC... DEST"
    return words[:-1], words[-1]


# -- the Dockerfile's structure ----------------------------------------------------------------


def test_two_stages_on_exactly_pinned_bases() -> None:
    """Multi-stage; every base image has an exact version tag (never latest, never a bare tag)."""
    assert len(STAGES) >= 2
    names = set()
    for stage in STAGES:
        if stage.image in names:
            continue  # FROM an earlier stage
        image, _, digest = stage.image.partition("@")
        repository, _, tag = image.rpartition(":")
        assert repository, f"{stage.image}: no tag"
        assert tag != "latest"
        assert EXACT_VERSION_TAG.match(tag), f"{stage.image}: not an exact version (x.y.z)"
        assert "slim" in tag, f"{stage.image}: use a slim base"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), stage.image
        if stage.name:
            names.add(stage.name)
    assert "@sha256:<digest>" in DOCKERFILE.read_text(), "keep the digest-pinning hint"


def test_runtime_stage_runs_as_a_non_root_user() -> None:
    """The final stage switches to a user that is not root, and stays there."""
    users = RUNTIME.all("USER")
    assert users
    user = users[-1].arguments.split(":")[0]
    assert user not in ("root", "0")
    assert RUNTIME.instructions.index(users[-1]) > max(
        RUNTIME.instructions.index(item) for item in RUNTIME.all("RUN")
    )


def test_healthcheck_asks_healthz_with_python() -> None:
    """HEALTHCHECK runs Python's urllib against /healthz on the served port (no curl in slim)."""
    (healthcheck,) = RUNTIME.all("HEALTHCHECK")
    command = healthcheck.exec_form()
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert "http://127.0.0.1:8080/healthz" in command[2]
    assert "--interval=" in healthcheck.arguments
    assert "--timeout=" in healthcheck.arguments


def test_cmd_is_cds_service_serve_on_the_exposed_port() -> None:
    """CMD runs gunicorn through ``cds-service serve`` on the EXPOSEd port, on all interfaces."""
    (cmd,) = RUNTIME.all("CMD")
    command = cmd.exec_form()
    assert command[:2] == ["cds-service", "serve"]
    port = command[command.index("--port") + 1]
    assert [item.arguments for item in RUNTIME.all("EXPOSE")] == [port]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert not RUNTIME.all("ENTRYPOINT")


def test_no_secret_is_baked_into_the_image() -> None:
    """No ENV or ARG names a password, token or key with a value; production profile is set."""
    for stage in STAGES:
        for item in stage.all("ENV") + stage.all("ARG"):
            for word in shlex.split(item.arguments):
                name, _, value = word.partition("=")
                assert not (SECRET_NAME.search(name) and value), f"line {item.line}: {name}"
    assert RUNTIME.environment()["CDS_PROFILE"] == "production"
    assert not RUNTIME.all("ADD")


def test_copy_only_files_that_exist_and_reach_the_context() -> None:
    """Every COPY source exists in the checkout and is not excluded by .dockerignore."""
    names = {stage.name for stage in STAGES if stage.name}
    for stage in STAGES:
        for item in stage.all("COPY"):
            options, _ = item.flags()
            if "from" in options:
                assert options["from"] in names, f"line {item.line}: unknown stage"
                continue
            sources, _ = copy_sources(item)
            for source in sources:
                assert (ROOT / source).exists(), f"line {item.line}: {source} does not exist"
                assert not ignored(source), f"line {item.line}: .dockerignore drops {source}"
    for must_stay_out in (".venv", ".git", "fhir_sandbox/node_modules", "cds_service/__pycache__"):
        assert ignored(must_stay_out), must_stay_out


# -- docker-compose.yml ------------------------------------------------------------------------


def all_values(node: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of every mapping entry in ``node``, recursively."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
            yield from all_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_values(item)


def test_compose_runs_the_service_against_a_healthy_postgres() -> None:
    """PostgreSQL on an exact tag with a health check; the service waits for it and migrations."""
    services = COMPOSE_DOCUMENT["services"]
    db, app, migrate = services["db"], services["cds-service"], services["migrate"]

    repository, _, tag = db["image"].partition(":")
    assert repository == "postgres"
    assert POSTGRES_VERSION_TAG.match(tag), db["image"]
    assert "pg_isready" in db["healthcheck"]["test"]
    assert db["volumes"]

    assert app["build"] == "."
    assert app["depends_on"]["db"] == {"condition": "service_healthy"}
    assert app["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert migrate["command"] == ["cds-service", "db", "upgrade"]
    assert migrate["depends_on"]["db"] == {"condition": "service_healthy"}
    assert migrate["environment"] == app["environment"]

    environment = app["environment"]
    assert environment["CDS_PROFILE"] == "production"
    assert environment["CDS_DATABASE_URL"].startswith("postgresql://cds:${POSTGRES_PASSWORD:?")
    assert environment["CDS_DATABASE_URL"].endswith("@db:5432/cds")
    assert PLACEHOLDER.match(environment["CDS_PUBLIC_BASE_URL"])
    assert environment["CDS_TRUSTED_CLIENTS"] == "/run/secrets/trusted_clients"
    assert PLACEHOLDER.match(COMPOSE_DOCUMENT["secrets"]["trusted_clients"]["file"])
    assert all(port.startswith("127.0.0.1:") for port in app["ports"])


def test_compose_commits_no_password() -> None:
    """Every password-like value is a ``${VAR:?message}`` placeholder, never a literal."""
    checked = 0
    for key, value in all_values(COMPOSE_DOCUMENT):
        if SECRET_NAME.search(key) and isinstance(value, str):
            assert PLACEHOLDER.match(value), f"{key} is not a ${{VAR:?message}} placeholder"
            checked += 1
        if isinstance(value, str) and "://" in value and "@" in value:
            credentials = value.split("://", 1)[1].split("@", 1)[0]
            password = credentials.partition(":")[2]
            assert PLACEHOLDER.match(password), f"{key}: a literal password in a URL"
            checked += 1
    assert checked >= 2


# -- the install steps, replayed ---------------------------------------------------------------


def host_path(root: Path, container: PurePosixPath | str) -> Path:
    """Where a container path lives in the replay (under ``root``)."""
    return root / str(container).lstrip("/")


def place(source: Path, destination: Path) -> None:
    """COPY semantics: a directory's contents into the destination, a file into it.

    Sources in the checkout are filtered by .dockerignore, as the build context is.
    """

    def dropped(directory: str, names: list[str]) -> list[str]:
        base = Path(directory)
        if not base.is_relative_to(ROOT):
            return []
        return [name for name in names if ignored((base / name).relative_to(ROOT).as_posix())]

    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True, ignore=dropped)
    else:
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / source.name)


def run(command: list[str] | str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
        shell=isinstance(command, str),
        **kwargs,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def fresh_venv(path: Path) -> dict[str, str]:
    """A new virtualenv; the environment whose ``python`` is that virtualenv's."""
    run([sys.executable, "-m", "venv", str(path)])
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CDS_", "VIRTUAL_ENV", "PYTHON"))
    }
    environment["PATH"] = f"{path / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
    environment["VIRTUAL_ENV"] = str(path)
    return environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replay_build(root: Path) -> Path:
    """The build stage's COPYs and RUNs under ``root``; the directory the wheel was built in."""
    workdir = host_path(root, BUILD.workdir())
    workdir.mkdir(parents=True)
    for item in BUILD.all("COPY"):
        sources, destination = copy_sources(item)
        assert not destination.startswith("/"), f"line {item.line}: copy under WORKDIR"
        for source in sources:
            assert (ROOT / source).is_dir() or destination.endswith("/"), f"line {item.line}"
            place(ROOT / source, workdir / destination)
    environment = fresh_venv(root / "build-venv")
    for item in BUILD.all("RUN"):
        assert " /" not in f" {item.arguments}", f"line {item.line}: use paths relative to WORKDIR"
        run(item.arguments, cwd=workdir, env=environment)
    return workdir


def replay_runtime(root: Path) -> dict[str, str]:
    """The runtime stage's COPY --from and pip RUNs in a fresh virtualenv; its environment."""
    mapping: dict[str, Path] = {}
    for item in RUNTIME.all("COPY"):
        options, words = item.flags()
        assert options.get("from") == BUILD.name, f"line {item.line}: COPY only from the build"
        *sources, destination = words
        target = host_path(root, destination)
        for source in sources:
            place(host_path(root, source), target)
        mapping[destination.rstrip("/")] = target
    environment = fresh_venv(root / "runtime-venv")
    for item in RUNTIME.all("RUN"):
        command = item.arguments
        if command.startswith("useradd "):
            continue  # creates the image's user: not something to do to this machine
        assert command.startswith("python -m pip install "), f"line {item.line}: unknown step"
        for container, local in mapping.items():
            command = command.replace(container, str(local))
        run(command, cwd=root, env=environment)
    return environment


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The replayed image: (its file system root, the environment of its virtualenv)."""
    root = tmp_path_factory.mktemp("image")
    workdir = replay_build(root)
    wheels = sorted((workdir / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    assert "cds_service/cards/services.yaml" in names, "the rule pack is not in the wheel"
    assert not any("__pycache__" in name for name in names)
    return root, replay_runtime(root)


def test_replayed_image_has_the_rule_pack(image: tuple[Path, dict[str, str]]) -> None:
    """The installed wheel finds its packaged rule pack outside the checkout."""
    root, environment = image
    result = run(["cds-service", "check-cards"], cwd=root, env=environment)
    assert "rule pack OK" in result.stdout
    assert str(root / "runtime-venv") in result.stdout  # the packaged copy, not the checkout's


def test_replayed_image_serves_and_passes_its_healthcheck(
    image: tuple[Path, dict[str, str]],
) -> None:
    """``cds-service serve`` with the image's CMD and ENV answers the HEALTHCHECK command."""
    root, environment = image
    home = host_path(root, RUNTIME.workdir())
    home.mkdir(parents=True, exist_ok=True)
    key = SigningKey.ec384()
    trust = write_trust_file(home, [{"iss": ISSUER, "jwks": jwk_set(key)}])
    environment = environment | RUNTIME.environment()
    environment |= {
        # what `docker run -e ...` adds in the production profile
        "CDS_PUBLIC_BASE_URL": "https://cds.example.org",
        "CDS_TRUSTED_CLIENTS": str(trust),
        "CDS_DATABASE_URL": environment["CDS_DATABASE_URL"].replace(
            "////var/lib/cds-service/", f"///{home}/"
        ),
    }
    port = free_port()
    command = RUNTIME.all("CMD")[0].exec_form()
    command[command.index("--host") + 1] = "127.0.0.1"  # loopback only on this machine
    command[command.index("--port") + 1] = str(port)
    healthcheck = RUNTIME.all("HEALTHCHECK")[0].exec_form()
    healthcheck[-1] = healthcheck[-1].replace("127.0.0.1:8080/", f"127.0.0.1:{port}/")

    def healthy() -> bool:
        result = subprocess.run(
            healthcheck, env=environment, capture_output=True, timeout=30, check=False
        )
        return result.returncode == 0

    assert not healthy()  # nothing listens yet: the check must fail
    process = subprocess.Popen(
        command, cwd=home, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
