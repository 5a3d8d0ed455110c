"""Deployment files say only what differs from the service's settings, and name images the build makes.

Settings live in service/settings.py. compose.yaml, the Kubernetes overlays, KServe, Ray Serve and
the Dockerfile may set a VAE_* variable only to a valid value that differs from its default; and
every image they run is one that compose.yaml builds from a stage of docker/Dockerfile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["cpu", "gpu"]
IMAGE_FIXED = {"host", "port", "model_dir"}  # the image's own: compose does not pass them through


def render(overlay: str) -> list[dict]:
    """``kubectl kustomize deploy/k8s/<overlay>``: what ``kubectl apply -k`` would send."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: scripts/test.sh installs it (Debian's kubernetes-client)"
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / overlay)], capture_output=True, text=True, check=True
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def containers(docs: list[dict]) -> list[dict]:
    found = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            found += doc["spec"]["template"]["spec"]["containers"]
        if doc["kind"] == "InferenceService":
            found += doc["spec"]["predictor"]["containers"]
    return found


def kserve() -> list[dict]:
    return [yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())]


def settings_in(source: str) -> dict[str, str]:
    """The VAE_* variables a deployment file sets, with their values."""
    if source.startswith("k8s/"):
        docs = render(source.removeprefix("k8s/"))
    elif source == "kserve":
        docs = kserve()
    elif source == "ray":
        ray = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
        return {
            k: str(v)
            for app in ray["applications"]
            for k, v in (app.get("runtime_env") or {}).get("env_vars", {}).items()
        }
    elif source == "dockerfile":
        text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
        return dict(
            re.findall(r"\b(VAE_[A-Z_]+)=(\S+)", " ".join(line for line in text.splitlines() if line.startswith("ENV")))
        )
    else:
        raise ValueError(source)
    return {
        e["name"]: str(e["value"]) for c in containers(docs) for e in c.get("env", []) if e["name"].startswith("VAE_")
    }


def problems(values: dict[str, str]) -> list[str]:
    """Why a set of VAE_* values is not a pure override of the settings: unknown, invalid or restated."""
    found, fields = [], {}
    defaults = Settings.model_construct()
    for env, value in values.items():
        field = env.removeprefix("VAE_").lower()
        if field not in Settings.model_fields:
            found.append(f"{env} is not a setting")
            continue
        fields[field] = value
        try:
            parsed = getattr(Settings(**{field: value}), field)
        except ValidationError as exc:
            found.append(f"{env}={value!r} is invalid: {exc.errors()[0]['msg']}")
            continue
        if parsed == getattr(defaults, field):
            found.append(f"{env}={value!r} restates the default")
    if not found:
        try:
            Settings(**fields)  # together, too: no setting may contradict another
        except ValidationError as exc:
            found.append(f"these settings contradict each other: {exc.errors()[0]['msg']}")
    return found


SOURCES = [f"k8s/{o}" for o in OVERLAYS] + ["kserve", "ray", "dockerfile"]


@pytest.mark.parametrize("source", SOURCES)
def test_deployment_files_set_only_valid_settings_that_differ_from_the_defaults(source):
    assert problems(settings_in(source)) == []


def test_the_check_catches_a_restated_an_invalid_and_an_unknown_setting():
    found = problems({"VAE_MAX_BATCH_ROWS": "128", "VAE_MAX_QUEUE_ROWS": "-1", "VAE_NO_SUCH": "1", "VAE_PORT": "8080"})
    assert found == [
        "VAE_MAX_BATCH_ROWS='128' restates the default",
        "VAE_MAX_QUEUE_ROWS='-1' is invalid: Input should be greater than or equal to 1",
        "VAE_NO_SUCH is not a setting",
    ]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_passes_through_every_setting_by_name_and_sets_none():
    for name, service in compose()["services"].items():
        if name == "train":
            continue
        environment = service["environment"]
        assert isinstance(environment, list) and all("=" not in e and "$" not in e for e in environment), environment
        expected = {f"VAE_{f.upper()}" for f in Settings.model_fields} - {f"VAE_{f.upper()}" for f in IMAGE_FIXED}
        assert set(environment) == expected, set(environment) ^ expected


def test_compose_waits_out_the_drain_before_it_kills():
    grace = Settings.model_fields["shutdown_grace_s"].default
    for name, service in compose()["services"].items():
        if name != "train":
            assert int(service["stop_grace_period"].removesuffix("s")) > grace


def dockerfile_stages(dockerfile: str = "docker/Dockerfile") -> list[str]:
    return re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / dockerfile).read_text(), flags=re.M)


def built_images() -> dict[str, tuple[str, str | None]]:
    """image -> (Dockerfile, target), for every image compose.yaml builds."""
    return {
        s["image"]: (s["build"]["dockerfile"], s["build"].get("target"))
        for s in compose()["services"].values()
        if "build" in s
    }


def test_the_default_docker_build_is_the_cpu_serving_image():
    assert dockerfile_stages()[-1] == "cpu" and built_images()["vae-serve:latest"] == ("docker/Dockerfile", "cpu")
    for dockerfile, target in built_images().values():
        assert (ROOT / dockerfile).is_file() and (target is None or target in dockerfile_stages(dockerfile))


def test_no_stage_of_the_serving_dockerfile_installs_torch():
    """Docker's classic builder builds every stage before the target: none may be the training image."""
    text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install ([^&;\n]*)", text)  # what each pip install is given
    assert installs and not any("torch" in args or "[train]" in args for args in installs), installs


@pytest.mark.parametrize("source", [f"k8s/{o}" for o in OVERLAYS] + ["kserve"])
def test_deployments_run_only_images_that_the_build_produces(source):
    docs = render(source.removeprefix("k8s/")) if source.startswith("k8s/") else kserve()
    images = {c["image"] for c in containers(docs)}
    assert images and images <= set(built_images()), images - set(built_images())
