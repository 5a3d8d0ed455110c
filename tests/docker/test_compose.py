"""`docker compose up` for real: a Docker engine, a locally built base image, the project image,
the healthcheck, and the API reached through the port published on 127.0.0.1.

Docker Hub is unreachable here, so the base image is a Debian bookworm rootfs made with
debootstrap (python3 + venv) and `docker import`ed, cached by tag. This machine's CA bundle
goes in through the Dockerfile's extra-CA folder, as a corporate user's proxy CA would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.live import free_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = "vae-serve-base:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_COPY = ROOT / "docker" / "certs" / "test-host-ca.crt"
PROJECT = "vaeservetest"


def sh(*cmd, timeout=900, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def engine_answers() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    )


def ensure_engine() -> None:
    """Install Debian's docker.io, docker-compose and debootstrap if missing; start dockerd (vfs) if none answers."""
    missing = [tool for tool in ("dockerd", "docker-compose", "debootstrap") if shutil.which(tool) is None]
    if missing:
        sh("apt-get", "update", "-qq")
        sh(
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "docker.io",
            "docker-compose",
            "debootstrap",
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if engine_answers():
        return
    with open(Path(tempfile.gettempdir()) / "vae-serve-dockerd.log", "ab") as log:  # dockerd keeps its own copy
        # setsid -f forks the daemon off and returns at once: dockerd outlives the test session, and no Popen
        # object is left to be collected while its process still runs (a ResourceWarning, an error here)
        subprocess.run(["setsid", "-f", "dockerd", "--storage-driver=vfs"], stdout=log, stderr=log, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(1)
    raise RuntimeError("dockerd did not answer within 60 s; see " + log.name)


def ensure_base_image() -> None:
    if sh("docker", "image", "inspect", BASE_TAG, check=False).returncode == 0:
        return
    with tempfile.TemporaryDirectory(prefix="vae-rootfs-") as rootfs:
        sh(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,ca-certificates",
            "bookworm",
            rootfs,
            timeout=1200,
        )  # debootstrap's own default mirror
        os.chmod(rootfs, 0o755)  # mkdtemp made it 0700: as the image's "/", it would lock out non-root users
        # the context manager closes tar's stdout and waits for it: a pipe left open is a ResourceWarning
        with subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE) as tar:
            sh("docker", "import", "-", BASE_TAG, stdin=tar.stdout, timeout=600)
        if tar.returncode != 0:
            raise RuntimeError(f"tar of the debootstrap rootfs failed ({tar.returncode})")


@pytest.fixture(scope="module")
def compose_service():
    if os.geteuid() != 0:
        pytest.skip("the Docker test installs Debian's docker.io and starts dockerd, which needs root")
    ensure_engine()
    ensure_base_image()
    shutil.copyfile(HOST_CA, CA_COPY)
    port = free_port()
    shell = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env = {
        **shell,
        "BASE_IMAGE": BASE_TAG,
        "VAE_PUBLISH": f"127.0.0.1:{port}",
        "COMPOSE_PROJECT_NAME": PROJECT,
        "VAE_MAX_DELAY_MS": "1",
    }  # the one setting this shell sets: compose passes it, and only it, through
    compose = ["docker-compose", "-f", str(ROOT / "compose.yaml")]
    try:
        sh(*compose, "build", "vae-serve", env=env, cwd=ROOT, timeout=1500)
        sh(*compose, "up", "-d", "vae-serve", env=env, cwd=ROOT, timeout=300)
        container = sh(*compose, "ps", "-q", "vae-serve", env=env, cwd=ROOT).stdout.strip()
        deadline, health = time.monotonic() + 180, ""
        while time.monotonic() < deadline:
            health = sh("docker", "inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()
            if health == "healthy":
                break
            time.sleep(2)
        logs = sh("docker", "logs", container, check=False).stdout + sh("docker", "logs", container, check=False).stderr
        assert health == "healthy", f"container health {health!r}; logs:\n{logs[-4000:]}"
        yield f"http://127.0.0.1:{port}", container
    finally:
        sh(*compose, "down", "-v", "--remove-orphans", env=env, cwd=ROOT, check=False, timeout=300)
        CA_COPY.unlink(missing_ok=True)


def test_compose_serves_the_shipped_models(compose_service):
    url, container = compose_service
    with httpx.Client(base_url=url, timeout=30) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and "fashion-mnist" in ready.json()["models"]
        sample = client.post("/sample", json={"n": 3, "seed": 7}).json()
        assert np.asarray(sample["images"]).shape == (3, 28, 28) and sample["seed"] == 7
        binarized = (np.asarray(sample["images"]).reshape(3, 784) > 0.5).astype(float).tolist()
        elbo = client.post("/elbo", json={"inputs": binarized, "samples": 10, "seed": 0}).json()
        assert all(g >= 0 for g in elbo["gap"]) and len(elbo["log_likelihood"]) == 3
        models = client.get("/models").json()["models"]
        assert {m["name"] for m in models} >= {"fashion-mnist", "fashion-mnist-gaussian", "fashion-mnist-2d"}
        assert all(m["provider"] == "CPUExecutionProvider" for m in models)
        assert all("latent_map.png" in m["report"] for m in models)  # the report figures ship in the image
        page = client.get("/")  # the playground's static files are package data, installed non-editable here
        assert (
            page.status_code == 200
            and "/static/app.js" in page.text
            and client.get("/static/app.js").status_code == 200
        )
        oip = client.get("/v2/models/fashion-mnist-decoder").json()
        assert oip["inputs"][0]["shape"] == [-1, 32]


def test_container_runs_as_non_root_without_torch(compose_service):
    _, container = compose_service
    assert sh("docker", "exec", container, "id", "-u").stdout.strip() != "0"
    probe = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)"
    assert sh("docker", "exec", container, "python3", "-c", probe).stdout.split() == ["True", "True"]
    restart = sh("docker", "inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", container).stdout.strip()
    assert restart == "unless-stopped"


def test_compose_passes_through_only_the_settings_the_shell_set(compose_service):
    """What the service's process sees (compose may list unset names with no value; no process reads those)."""
    _, container = compose_service
    probe = "import os; print(' '.join(sorted(f'{k}={v}' for k, v in os.environ.items() if k.startswith('VAE_'))))"
    seen = sh("docker", "exec", container, "python3", "-c", probe).stdout.split()
    assert seen == ["VAE_HOST=0.0.0.0", "VAE_MAX_DELAY_MS=1"]  # the image's bind address, and what the shell set
