"""vae-serve's inference service (FastAPI + onnxruntime); it never imports torch."""

__version__ = "0.1.0"
