"""Peer: MLServer serving the decoder over the Open Inference Protocol, with its adaptive batching.

A custom runtime, as MLServer's docs write one for a model it has no runtime for: the decoder's
ONNX file in onnxruntime, tensors through MLServer's NumPy codec. It runs in its own environment
(``.venv-mlserver``: MLServer pins a FastAPI that the service's would not accept); ``serve.py``
beside it starts it on a port.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "fashion-mnist"


class Decoder(MLModel):
    async def load(self) -> bool:
        manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(MODEL_DIR / manifest["graphs"]["decoder"]["path"]), options, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        z = NumpyCodec.decode_input(payload.inputs[0])
        wanted = [o.name for o in payload.outputs or []] or ["image", "logits"]
        results = self.session.run(wanted, {"z": z})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(wanted, results)]
        )
