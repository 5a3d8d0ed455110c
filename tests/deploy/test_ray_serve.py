"""Ray Serve: a local Ray, the app deployed with two replicas, the REST and OIP routes through Ray's proxy."""

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from benchmarks.live import free_port
from service.ray_app import build_app

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def test_the_serve_config_file_is_valid_and_builds_the_app():
    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text()))
    (application,) = config.applications
    assert application.import_path == "service.ray_app:build_app" and application.route_prefix == "/"
    (deployment,) = application.deployments
    assert deployment.name == "vae-serve" and deployment.autoscaling_config["target_ongoing_requests"] > 0
    assert build_app()._bound_deployment.name == deployment.name  # the config's options reach this deployment
    assert build_app({"num_replicas": 3})._bound_deployment.num_replicas == 3  # builder args are deployment options
    assert "env_vars" not in (application.runtime_env or {})  # settings come from service/settings.py unless set


@pytest.fixture(scope="module")
def ray_proxy(tmp_path_factory):
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"VAE_MODEL_DIR": str(ROOT / "models"), "VAE_LOG_LEVEL": "warning"}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            build_app({"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}), name="vae-serve", route_prefix="/"
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_the_rest_and_oip_routes_through_rays_proxy(ray_proxy):
    status = serve.status().applications["vae-serve"]
    assert status.status == "RUNNING"
    assert status.deployments["vae-serve"].replica_states == {"RUNNING": 2}

    sample = httpx.post(f"{ray_proxy}/sample", json={"n": 3, "seed": 7}, timeout=60)
    assert sample.status_code == 200 and np.asarray(sample.json()["images"]).shape == (3, 28, 28)
    again = httpx.post(f"{ray_proxy}/sample", json={"n": 3, "seed": 7}, timeout=60).json()
    assert again["images"] == sample.json()["images"]  # either replica: the same seed, the same bytes
    elbo = httpx.post(f"{ray_proxy}/elbo", json={"inputs": [[0.0] * 784], "samples": 4, "seed": 1}, timeout=60).json()
    assert elbo["gap"][0] >= 0
    oip = httpx.get(f"{ray_proxy}/v2/models/fashion-mnist-decoder", timeout=30).json()
    assert oip["inputs"][0]["name"] == "z"
    bad = httpx.post(f"{ray_proxy}/decode", json={"latents": [[0.0] * 3]}, timeout=30)
    assert bad.status_code == 422  # the app's own validation, through Ray
    assert httpx.get(f"{ray_proxy}/health/live", timeout=30).status_code == 200
