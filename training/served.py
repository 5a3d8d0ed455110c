"""A served model read back as torch: its config, the model and its manifest, from a model folder
alone (``train.init_from`` trains further from it, ``reexport`` exports it again)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from .config import Config
from .model import VAE


def load_served_model(model_dir: Path) -> tuple[Config, VAE, dict]:
    """A served model as torch: its config, the model and its manifest. The weights are read back
    from the encoder and decoder graphs' initializers (named as in the state dict), the Gaussian σ
    from the decoder, so a model folder alone is enough to export again or to train further."""
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: name a folder of an exported model")
    manifest = json.loads(manifest_path.read_text())
    cfg = Config.from_dict(manifest["config"])
    model = VAE(cfg.model)
    state = {}
    for graph in ("encoder", "decoder"):
        proto = onnx.load(str(model_dir / manifest["graphs"][graph]["path"]))  # external data beside it
        for tensor in proto.graph.initializer:
            if tensor.name.startswith("model."):
                state[tensor.name.removeprefix("model.")] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
    if model.log_scale is not None:
        decoder = ort.InferenceSession(
            str(model_dir / manifest["graphs"]["decoder"]["path"]), providers=["CPUExecutionProvider"]
        )
        log_scale = decoder.run(["log_scale"], {"z": np.zeros((1, cfg.model.latent_dim), np.float32)})[0]
        state["log_scale"] = torch.tensor(float(log_scale.reshape(-1)[0]))
    model.load_state_dict(state, strict=True)
    model.eval()
    return cfg, model, manifest
