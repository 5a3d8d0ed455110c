"""The Kubernetes and KServe manifests: valid against the Kubernetes schemas, and consistent with
the service (probe routes exist, ports line up, the grace period covers the drain)."""

import kubernetes_validate
import pytest

from service.app import create_app
from service.settings import Settings
from tests.deploy.test_config import OVERLAYS, containers, kserve, render

KUBERNETES = "1.30.0"  # the oldest version the manifests target (preStop sleep is 1.30+)
IMAGE_PORT = 8000  # docker/Dockerfile: VAE_HOST=0.0.0.0 and the default VAE_PORT


def kind(docs: list[dict], name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == name]
    return doc


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    paths = create_app(Settings()).openapi()["paths"]
    return {path for path, operations in paths.items() if "get" in operations}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_objects_valid_against_the_kubernetes_schemas(overlay):
    docs = render(overlay)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_inference_service_is_a_kserve_predictor_with_valid_containers():
    (isvc,) = kserve()
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    # KServe's CRD is not among the Kubernetes schemas; its containers are core/v1 Containers, so check them as a Pod's.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": predictor["containers"]},
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)


def all_containers() -> list[tuple[str, dict]]:
    return [(o, c) for o in OVERLAYS for c in containers(render(o))] + [("kserve", c) for c in containers(kserve())]


@pytest.mark.parametrize("where, container", all_containers(), ids=lambda v: v if isinstance(v, str) else v["name"])
def test_probes_hit_real_routes_on_the_port_the_service_listens_on(where, container, get_routes):
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    listens = int(env.get("VAE_PORT", IMAGE_PORT))
    grpc_port = int(env.get("VAE_GRPC_PORT", Settings.model_fields["grpc_port"].default))
    ports = {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container["ports"]}
    assert listens in ports.values()
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container}
    assert {"livenessProbe", "readinessProbe"} <= set(probes)
    for kind, probe in probes.items():
        if "grpc" in probe:  # grpc.health.v1 on the gRPC port: SERVING only when ready, so for readiness only
            assert kind == "readinessProbe" and probe["grpc"]["port"] == grpc_port, f"{where}: {kind} {probe}"
            assert grpc_port in ports.values(), f"{where}: the gRPC port is not a container port"
            continue
        path, port = probe["httpGet"]["path"], probe["httpGet"]["port"]
        assert path in get_routes, f"{where}: no GET route {path}"
        assert ports.get(port, port) == listens, f"{where}: probe port {port}"
        assert ("ready" in path) if kind == "readinessProbe" else ("live" in path), f"{where}: {kind} {path}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_prestop_pause_and_the_drain(overlay):
    pod = kind(render(overlay), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    drain = float(env.get("VAE_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default))
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + pause
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's non-root user


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_hpa_and_pdb_point_at_the_deployment(overlay):
    docs = render(overlay)
    deployment = kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kind(docs, "Service")["spec"]["selector"].items() <= pod_labels.items()
    assert kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service_port = kind(docs, "Service")["spec"]["ports"][0]["targetPort"]
    assert service_port in {p.get("name") for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_gpu_overlay_asks_for_a_gpu_and_the_cpu_overlay_does_not():
    gpu = kind(render("gpu"), "Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpu = kind(render("cpu"), "Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1" and "nvidia.com/gpu" not in cpu


def test_the_validation_catches_a_broken_manifest():
    broken = kind(render("cpu"), "Deployment")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    typo = kind(render("cpu"), "Deployment")
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = typo["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: an unknown field is an error
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)
