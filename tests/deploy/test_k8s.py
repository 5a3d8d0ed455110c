"""The Kubernetes and KServe manifests: valid against the Kubernetes schemas, and consistent with
the service (probe routes exist, ports line up, the grace period covers the drain)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.app import create_app
from service.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES = "1.30.0"  # the oldest version the manifests target (preStop sleep is 1.30+)
CORE = ["deployment.yaml", "deployment-gpu.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    paths = create_app(Settings()).openapi()["paths"]
    return {path for path, operations in paths.items() if "get" in operations}


@pytest.mark.parametrize("name", CORE)
def test_manifests_validate_against_the_kubernetes_schemas(name):
    kubernetes_validate.validate(load(name), KUBERNETES, strict=True)


def test_the_inference_service_is_a_kserve_predictor_with_valid_containers():
    isvc = load("inferenceservice.yaml")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    # KServe's CRD is not among the Kubernetes schemas; its containers are core/v1 Containers, so check them as a Pod's.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": predictor["containers"]}}
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)


def containers() -> list[tuple[str, dict]]:
    found = [(name, c) for name in ("deployment.yaml", "deployment-gpu.yaml") for c in load(name)["spec"]["template"]["spec"]["containers"]]
    return found + [("inferenceservice.yaml", c) for c in load("inferenceservice.yaml")["spec"]["predictor"]["containers"]]


@pytest.mark.parametrize("name, container", containers(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_probes_hit_real_routes_on_the_port_the_service_listens_on(name, container, get_routes):
    env = {e["name"]: e["value"] for e in container["env"]}
    ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container["ports"]}
    assert int(env["VAE_PORT"]) in ports.values() and env["VAE_HOST"] == "0.0.0.0"
    probes = [container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container]
    assert {"livenessProbe", "readinessProbe"} <= set(container)
    for probe in probes:
        path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
        assert path in get_routes, f"{name}: no GET route {path}"
        assert ports.get(port, port) == int(env["VAE_PORT"]), f"{name}: probe port {port}"
    assert "ready" in container["readinessProbe"]["httpGet"]["path"] and "live" in container["livenessProbe"]["httpGet"]["path"]


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_termination_grace_covers_the_prestop_pause_and_the_drain(name):
    pod = load(name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    drain = float({e["name"]: e["value"] for e in container["env"]}["VAE_SHUTDOWN_GRACE_S"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pause
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's non-root user


def test_service_hpa_and_pdb_point_at_the_deployments():
    cpu, gpu = load("deployment.yaml"), load("deployment-gpu.yaml")
    for deployment in (cpu, gpu):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert load("service.yaml")["spec"]["selector"].items() <= pod_labels.items()
        assert load("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    cpu_selector, gpu_selector = cpu["spec"]["selector"]["matchLabels"], gpu["spec"]["selector"]["matchLabels"]
    assert not cpu_selector.items() <= gpu["spec"]["template"]["metadata"]["labels"].items()  # no Deployment adopts the other's pods
    assert not gpu_selector.items() <= cpu["spec"]["template"]["metadata"]["labels"].items()
    service_port = load("service.yaml")["spec"]["ports"][0]["targetPort"]
    assert service_port in {p.get("name") for p in cpu["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert load("hpa.yaml")["spec"]["scaleTargetRef"]["name"] == cpu["metadata"]["name"]
    assert set(load("kustomization.yaml")["resources"]) <= {p.name for p in K8S.glob("*.yaml")}


def test_the_validation_catches_a_broken_manifest():
    broken = load("deployment.yaml")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    typo = load("deployment.yaml")
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = typo["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: an unknown field is an error
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)
