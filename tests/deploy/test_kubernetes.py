"""The Kubernetes manifests: every way of deploying them builds, validates and hangs together.

``kubectl kustomize`` (kustomize built into kubectl, offline) builds the CPU base, the GPU
overlay, and both again with the optional components (ServiceMonitor, model volume) in a
throw-away overlay, as a user's own overlay would add them. Each build passes
kubernetes-validate --strict (the ServiceMonitor, a CRD it has no schema for, is checked here
by hand), and the cross-object references no schema sees hold: selectors match the pod labels,
named ports exist, the scrape annotations and the ServiceMonitor reach the port that serves
/metrics, the HPA scales the Deployment on a metric the adapter serves, and the model directory
is on the mounted volume.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT, run
from tests.deploy.test_static import EXPOSED

K8S = DEPLOY / "k8s"
BASE_MANIFESTS = ["namespace.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
COMPONENTS = ["service-monitor", "model-volume"]
# name -> (the kustomization built on, components added)
BUILDS = {
    "base": ("base", []),
    "gpu": ("overlays/gpu", []),
    "base+components": ("base", COMPONENTS),
    "gpu+components": ("overlays/gpu", COMPONENTS),
}


@pytest.fixture(scope="module")
def built(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Build name -> {"text": the YAML kustomize wrote, "objects": {(kind, name): object}}."""
    out = {}
    for name, (root, components) in BUILDS.items():
        target = K8S / root
        if components:  # an overlay of the user's, as docs/operations.md shows
            target = tmp_path_factory.mktemp(name.replace("+", "-"))
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / root, target)],
                "components": [os.path.relpath(K8S / "components" / c, target) for c in components],
            }
            (target / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        result = run([kubectl, "kustomize", target])
        assert result.returncode == 0, f"{name}: {result.stderr}"
        documents = list(yaml.safe_load_all(result.stdout))
        objects = {(d["kind"], d["metadata"]["name"]): d for d in documents}
        assert len(objects) == len(documents), f"{name}: two objects of one kind and name"
        out[name] = {"text": result.stdout, "objects": objects}
    return out


def pod_spec(objects: dict) -> dict:
    return objects["Deployment", "abn-serve"]["spec"]["template"]["spec"]


def container(objects: dict) -> dict:
    (only,) = pod_spec(objects)["containers"]
    return only


def env(objects: dict) -> dict[str, str]:
    entries = container(objects)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"an environment variable set twice: {names}"
    return {e["name"]: e.get("value") for e in entries}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_every_manifest_is_in_a_kustomization() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(BASE_MANIFESTS)
    assert sorted(p.name for p in (K8S / "base").glob("*.yaml")) == sorted(
        [*BASE_MANIFESTS, "kustomization.yaml"]
    )
    for component in COMPONENTS:
        folder = K8S / "components" / component
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Component"
        listed = {*kustomization.get("resources", [])}
        listed |= {p["path"] for p in kustomization.get("patches", [])}
        assert listed == {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert {p.name for p in (K8S / "components").iterdir()} == set(COMPONENTS)


@pytest.mark.parametrize("build", BUILDS)
def test_kubernetes_validate_strict(
    build: str, built: dict, kubernetes_validate: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{build}.yaml"
    path.write_text(built[build]["text"])
    result = run([kubernetes_validate, "--strict", path])
    assert result.returncode == 0, result.stdout + result.stderr
    objects = built[build]["objects"]
    core = [key for key in objects if key[0] != "ServiceMonitor"]
    assert result.stdout.count("passed") == len(core), result.stdout + result.stderr


@pytest.mark.parametrize("build", BUILDS)
def test_selectors_ports_and_scraping_agree(build: str, built: dict) -> None:
    objects = built[build]["objects"]
    deployment = objects["Deployment", "abn-serve"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    namespaces = {o["metadata"].get("namespace") for k, o in objects.items() if k[0] != "Namespace"}
    assert namespaces == {"abn"} and ("Namespace", "abn") in objects

    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    service = objects["Service", "abn-serve"]
    assert selects(service["spec"]["selector"], pod_labels)
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports
    pdb = objects["PodDisruptionBudget", "abn-serve"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)

    # Plain Prometheus: the annotations name the container port that serves /metrics.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) in ports.values()

    # The Prometheus Operator: the ServiceMonitor selects the Service, in its namespace, on a
    # port of the Service that leads to the same container port.
    monitor = objects.get(("ServiceMonitor", "abn-serve"))
    assert (monitor is not None) == ("components" in build)
    if monitor is not None:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert selects(spec["selector"]["matchLabels"], service["metadata"]["labels"])
        assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
        service_ports = {p["name"]: p for p in service["spec"]["ports"]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == annotations["prometheus.io/path"]
        target = service_ports[endpoint["port"]]["targetPort"]
        assert ports[target] == int(annotations["prometheus.io/port"])
        assert service["metadata"]["labels"][spec["jobLabel"]] == "abn-serve"  # rules' job


@pytest.mark.parametrize("build", BUILDS)
def test_hpa_scales_the_deployment_on_a_metric_the_adapter_serves(build: str, built: dict) -> None:
    objects = built[build]["objects"]
    hpa = objects["HorizontalPodAutoscaler", "abn-serve"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) in objects
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {}
    for rule in values["rules"]["custom"]:
        series = re.match(r"\w+", rule["seriesQuery"]).group(0)
        assert series in EXPOSED, f"the adapter asks for {series}, which the service lacks"
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        served[rule["name"]["as"]] = series
    (metric,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metric["metric"]["name"] in served
    # hpa.yaml's rule: a quarter of a full batch pending per pod, on CPU and GPU alike.
    batch = int(env(objects)["ABN_MAX_BATCH_SIZE"])
    assert float(metric["target"]["averageValue"]) * 4 == batch


@pytest.mark.parametrize("build", BUILDS)
def test_probes_and_resources(build: str, built: dict) -> None:
    c = container(built[build]["objects"])
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load time"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(c["resources"])
    assert all(name.startswith("ABN_") for name in env(built[build]["objects"]))


def test_gpu_overlay_asks_for_a_gpu_and_serves_on_it(built: dict) -> None:
    cpu, gpu = built["base"]["objects"], built["gpu"]["objects"]
    assert env(cpu)["ABN_DEVICE"] == "cpu"
    changed = {k for k in env(cpu) | env(gpu) if env(cpu).get(k) != env(gpu).get(k)}
    assert changed == {"ABN_DEVICE", "ABN_WORKERS", "ABN_MAX_BATCH_SIZE"}
    assert (env(gpu)["ABN_DEVICE"], env(gpu)["ABN_WORKERS"]) == ("cuda", "1")
    resources = container(gpu)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(container(cpu)["resources"])
    spec = pod_spec(gpu)
    assert spec["nodeSelector"] and "nodeSelector" not in pod_spec(cpu)
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert container(gpu)["image"] == container(cpu)["image"] + "-cuda"
    # Everything else is the base's: probes, security, volumes, the rollout strategy.
    for key in ("startupProbe", "readinessProbe", "livenessProbe", "securityContext", "ports"):
        assert container(gpu)[key] == container(cpu)[key], key
    assert spec["volumes"] == pod_spec(cpu)["volumes"]
    deployment = "Deployment", "abn-serve"
    assert gpu[deployment]["spec"]["strategy"] == cpu[deployment]["spec"]["strategy"]


@pytest.mark.parametrize("build", ["base+components", "gpu+components"])
def test_model_volume_holds_the_model_directory(build: str, built: dict) -> None:
    objects = built[build]["objects"]
    model_dir = Path(env(objects)["ABN_MODEL_DIR"])
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    (mount,) = [m for m in mounts.values() if model_dir.is_relative_to(m["mountPath"])]
    assert mount.get("readOnly") is True  # the service cannot alter its model
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = objects["PersistentVolumeClaim", claim["claimName"]]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every replica, on any node
    # The default names the shipped model, as docs/operations.md copies it in.
    assert (ROOT / "model_store" / model_dir.name / "manifest.json").is_file()
    assert "ABN_MODEL_DIR" not in env(built[build.split("+")[0]]["objects"])  # image's own


def test_operations_doc_names_every_kustomization() -> None:
    """A base, overlay or component nobody can find is one nobody uses."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    roots = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
    assert len(roots) == 2 + len(COMPONENTS)
    for root in roots:
        assert str(root.relative_to(ROOT)) in doc, f"docs/operations.md does not name {root}"
