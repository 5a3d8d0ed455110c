"""Read a model's manifest.json and check its files (no torch: this is the serving side)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

REQUIRED_GRAPHS = ("encoder", "decoder", "score", "reparameterize")
MANIFEST_VERSIONS = (2,)  # the layouts this service reads (training/export.py writes the newest)


class ManifestError(ValueError):
    """A model that cannot be served; the message says which file and why."""


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str
    sha256: str


class GraphSpec(FileSpec):
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    batch_axes: dict[str, int]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    manifest_version: int
    name: str
    version: str
    latent_dim: int
    likelihood: str
    image_shape: tuple[int, int, int]  # (H, W, C), C = 1 or 3
    graphs: dict[str, GraphSpec]
    weights: FileSpec | None = None  # external data shared by the graphs
    metrics: dict[str, Any] = {}
    sigma: float | None = None
    architecture: str | None = None
    created_at: str | None = None
    dataset: dict[str, Any] = {}
    anomaly: dict[str, Any] | None = None  # the anomaly score's calibration (service/anomaly.py)

    def summary(self) -> dict[str, Any]:
        """What /models shows: everything but the bulky training config and calibration data."""
        data = self.model_dump()
        data.pop("config", None)
        calibration = data.pop("anomaly", None)
        data["anomaly"] = (
            None
            if calibration is None
            else {k: calibration[k] for k in ("method", "statistics", "samples", "fitted_on") if k in calibration}
        )
        return data

    @property
    def image_size(self) -> int:
        h, w, c = self.image_shape
        return h * w * c


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_layout(manifest: Manifest, path: Path) -> None:
    """The manifest is one this service reads, with every graph, and images of a servable shape."""
    again = "re-export the model with `python -m training export`"
    if manifest.manifest_version not in MANIFEST_VERSIONS:
        supported = ", ".join(map(str, MANIFEST_VERSIONS))
        raise ManifestError(
            f"{path}: manifest_version {manifest.manifest_version} is not one this service reads ({supported}); {again}"
        )
    missing = [g for g in REQUIRED_GRAPHS if g not in manifest.graphs]
    if missing:
        raise ManifestError(f"{path}: graphs missing: {', '.join(missing)}; {again}")
    h, w, c = manifest.image_shape
    if h < 1 or w < 1 or c not in (1, 3):
        raise ManifestError(f"{path}: image_shape {list(manifest.image_shape)} is not [H, W, 1] or [H, W, 3]")
    x = manifest.graphs["encoder"].inputs.get("x", [])
    if x[-1:] != [manifest.image_size]:
        raise ManifestError(
            f"{path}: the encoder takes {x}, "
            f"not the {manifest.image_size} values of image_shape {list(manifest.image_shape)}"
        )


def load_manifest(model_dir: Path) -> Manifest:
    """Parse ``model_dir/manifest.json`` and verify every graph file's sha256."""
    path = model_dir / "manifest.json"
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: invalid JSON ({exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    check_layout(manifest, path)
    files = {f"{name} graph": spec for name, spec in manifest.graphs.items()}
    if manifest.weights is not None:
        files["weights"] = manifest.weights
    for what, spec in files.items():
        file = model_dir / spec.path
        if not file.is_file():
            raise ManifestError(f"{file}: {what} file not found")
        actual = sha256_of(file)
        if actual != spec.sha256:
            raise ManifestError(f"{file}: sha256 {actual[:12]}… does not match the manifest's {spec.sha256[:12]}…")
    return manifest
