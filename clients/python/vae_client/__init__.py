"""vae-serve's Python client: ``Client`` / ``AsyncClient`` and typed errors (httpx and numpy only)."""

from .client import Anomaly, AsyncClient, Client, Encoding, Evidence, Samples
from .errors import Busy, Invalid, NotFound, Timeout, Unauthorized, VaeError

__all__ = [
    "Anomaly", "AsyncClient", "Busy", "Client", "Encoding", "Evidence", "Invalid", "NotFound", "Samples", "Timeout",
    "Unauthorized", "VaeError",
]  # fmt: skip
__version__ = "0.1.0"
