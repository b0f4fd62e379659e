"""deploy/: the Kubernetes manifests validate offline against Kubernetes' own schemas
(kubernetes-validate bundles them) and yamllint, the custom resources use only their documented
fields, every name the autoscaler depends on comes from spec, and the Dockerfile runs commands
the project has. The gRPC probe the Deployment relies on is checked against a real tritonserver."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from conftest import ROOT
from yamllint import linter
from yamllint.config import YamlLintConfig

from yolo_triton import spec
from yolo_triton.cli import COMMANDS
from yolo_triton.perf import prometheus

K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KUBERNETES_VERSION = "1.30.0"  # the oldest release whose schemas the manifests are checked against too
ANY = None  # a field whose value is not checked further

# Fields as documented by each project's API reference (the custom resources have no bundled schema).
CONTAINER = {k: ANY for k in ("name", "image", "command", "args", "env", "envFrom", "resources", "ports",
                              "volumeMounts", "imagePullPolicy", "securityContext", "livenessProbe",
                              "readinessProbe", "startupProbe", "workingDir")}
DOCUMENTED: dict[str, dict] = {
    # prometheus-operator API reference: monitoring.coreos.com/v1 ServiceMonitor
    "ServiceMonitor": {"spec": {
        "selector": ANY, "namespaceSelector": ANY, "jobLabel": ANY, "targetLabels": ANY, "podTargetLabels": ANY,
        "sampleLimit": ANY, "endpoints": [{k: ANY for k in (
            "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels",
            "honorTimestamps", "relabelings", "metricRelabelings", "tlsConfig", "bearerTokenSecret", "basicAuth")}],
    }},
    # prometheus-operator API reference: monitoring.coreos.com/v1 PrometheusRule
    "PrometheusRule": {"spec": {"groups": [{"name": ANY, "interval": ANY, "limit": ANY, "rules": [
        {k: ANY for k in ("record", "alert", "expr", "for", "labels", "annotations")}]}]}},
    # KServe API reference: serving.kserve.io/v1beta1 InferenceService (predictor.model is a container)
    "InferenceService": {"spec": {"predictor": {
        **{k: ANY for k in ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                            "timeout", "serviceAccountName", "nodeSelector", "tolerations", "canaryTrafficPercent")},
        "model": {**CONTAINER, "modelFormat": {"name": ANY, "version": ANY}, "runtime": ANY,
                  "runtimeVersion": ANY, "protocolVersion": ANY, "storageUri": ANY},
    }}},
    "Kustomization": {k: ANY for k in ("resources", "labels", "commonLabels", "namespace", "images", "patches")},
}
API_VERSIONS = {"ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
                "InferenceService": "serving.kserve.io/v1beta1", "Kustomization": "kustomize.config.k8s.io/v1beta1"}
METADATA = {"name": ANY, "namespace": ANY, "labels": ANY, "annotations": ANY}


def manifests() -> list[tuple[Path, dict]]:
    return [(p, doc) for p in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def undocumented(value: object, allowed: object, where: str) -> list[str]:
    """Paths in `value` that the documented `allowed` tree does not have."""
    if allowed is ANY:
        return []
    if isinstance(allowed, list):
        return [p for i, item in enumerate(value) for p in undocumented(item, allowed[0], f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: expected an object"]
    return [f"{where}.{k}" for k in value if k not in allowed] + \
        [p for k, v in value.items() if k in allowed for p in undocumented(v, allowed[k], f"{where}.{k}")]


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, None], ids=["k8s-1.30", "bundled-latest"])
def test_every_builtin_resource_validates_strictly(version):
    latest = kubernetes_validate.latest_version()
    checked = 0
    for _, doc in manifests():
        if doc["kind"] in DOCUMENTED:
            continue
        kubernetes_validate.validate(doc, version or latest, strict=True)  # raises on any violation
        checked += 1
    assert checked >= 7


def test_yamllint_is_clean():
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    problems = [f"{p.name}:{e.line}: {e.message}" for p in sorted(K8S.glob("*.yaml"))
                for e in linter.run(p.read_text(), config, str(p))]
    assert not problems, problems


def test_kustomization_lists_exactly_the_files_of_the_folder():
    (kustomization,) = by_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert not any(p.suffix in (".yml", ".json") for p in K8S.iterdir())


@pytest.mark.parametrize("kind", sorted(DOCUMENTED))
def test_custom_resources_use_documented_fields(kind):
    docs = by_kind(kind)
    assert docs, f"no {kind} in deploy/k8s"
    for doc in docs:
        assert doc["apiVersion"] == API_VERSIONS[kind]
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        assert not undocumented(body, DOCUMENTED[kind], kind), undocumented(body, DOCUMENTED[kind], kind)
        assert not undocumented(doc.get("metadata", {}), METADATA, f"{kind}.metadata")


def test_the_autoscaler_reads_the_rule_make_scale_checks():
    """One signal, from spec, end to end: the recorded rule's expression is prometheus.queue_per_request,
    the adapter serves that series under spec's name, and the HPA scales its Deployment on it."""
    (rule_doc,) = by_kind("PrometheusRule")
    (rule,) = rule_doc["spec"]["groups"][0]["rules"]
    assert rule["record"] == spec.QUEUE_PER_REQUEST_RULE
    want = prometheus.queue_per_request(prometheus.CLUSTER_WINDOW, by=prometheus.CLUSTER_BY)
    assert " ".join(rule["expr"].split()) == want
    (adapter_map,) = [d for d in by_kind("ConfigMap") if "config.yaml" in d.get("data", {})]
    (adapter,) = yaml.safe_load(adapter_map["data"]["config.yaml"])["rules"]
    assert adapter["seriesQuery"].startswith(spec.QUEUE_PER_REQUEST_RULE + "{")
    assert adapter["name"]["as"] == spec.QUEUE_PER_REQUEST_METRIC
    assert spec.QUEUE_PER_REQUEST_RULE in adapter["metricsQuery"] and "<<.LabelMatchers>>" in adapter["metricsQuery"]
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == spec.QUEUE_PER_REQUEST_METRIC
    (deployment,) = by_kind("Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}


def test_the_recorded_rule_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package has it; `make setup` installs it)")
    (rule_doc,) = by_kind("PrometheusRule")
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump(rule_doc["spec"]))
    (tmp_path / "local.yml").write_text(prometheus.rules())
    out = subprocess.run([promtool, "check", "rules", str(tmp_path / "k8s.yml"), str(tmp_path / "local.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_services_probes_and_monitor_point_at_the_pods():
    (deployment,) = by_kind("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"grpc", "metrics"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    services = by_kind("Service")
    for svc in services:
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc["metadata"]["name"]
        assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    (monitor,) = by_kind("ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    watched = [s for s in services if wanted <= s["metadata"]["labels"].items()]
    assert [p["name"] for s in watched for p in s["spec"]["ports"]] == [monitor["spec"]["endpoints"][0]["port"]]
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_tritonserver_answers_the_grpc_health_probe(server):
    """Kubernetes' grpc probe calls grpc.health.v1.Health/Check with an empty service name;
    tritonserver 2.51 answers SERVING (field 1 = 1) once it serves, so no HTTP port is needed."""
    with grpc.insecure_channel(server.url) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=bytes,
                                    response_deserializer=bytes)
        assert check(b"", timeout=10) == b"\x08\x01"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(r.split(None, 1)[0].upper(), r.split(None, 1)[1] if " " in r else "") for r in rows]


def project_commands(words: list[str]) -> list[list[str]]:
    """Each `yolo-triton <command> ...` in a command line, up to the next && or ;."""
    out, current = [], None
    for w in words:
        if w in ("&&", ";", "||"):
            current = None
        elif w == "yolo-triton":
            current = []
            out.append(current)
        elif current is not None:
            current.append(w)
    return out


def test_the_dockerfile_parses_and_runs_what_the_project_has():
    instructions = dockerfile_instructions()
    assert instructions[0][0] in ("FROM", "ARG")
    (base,) = [arg for op, arg in instructions if op == "FROM"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:24\.10-py3", base)  # 24.10 = tritonserver 2.51
    known = {"FROM", "ARG", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "CMD", "ENV", "LABEL", "ENTRYPOINT"}
    assert {op for op, _ in instructions} <= known
    for op, arg in instructions:
        if op == "COPY":
            *sources, _dest = arg.split()
            assert all((ROOT / s).exists() for s in sources), arg
    extras = re.findall(r'"\.\[([a-z,]+)\]"', " ".join(a for op, a in instructions if op == "RUN"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert extras and all(re.search(rf"^{e} = \[", pyproject, re.M) for e in extras[0].split(","))
    (cmd,) = [yaml.safe_load(a) for op, a in instructions if op == "CMD"]  # exec form is a JSON list
    (deployment,) = by_kind("Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    lines = [w for op, a in instructions if op == "RUN" for w in a.split()] + [";"] + cmd + [";"] + args
    used = project_commands([w.strip('"') for w in lines])
    assert {u[0] for u in used} >= {"build", "serve"}
    for command, *options in used:
        assert command in COMMANDS, command
        help_text = subprocess.run([sys.executable, "-m", "yolo_triton.cli", command, "--help"],
                                   capture_output=True, text=True, timeout=120).stdout
        for opt in (o for o in options if o.startswith("--")):
            assert re.search(rf"{re.escape(opt)}\b", help_text), f"yolo-triton {command} has no {opt}"
