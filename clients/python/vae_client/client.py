"""``Client`` and ``AsyncClient``: the same methods, blocking or awaited.

Each method builds a ``Call`` (what to send, how to read the answer) once; the two clients only
send it. NPY/NPZ on the wire by default (``binary=False``: JSON), the API key as a Bearer token,
the timeout also as ``X-Timeout-Ms`` so the server drops a request its client stopped waiting for.
Retries on 503 (honouring Retry-After) and on connection errors, with jittered exponential
backoff, up to ``retries``: every endpoint is safe to repeat.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from .errors import Timeout, VaeError, from_response
from .images import Images, batch
from .wire import JSON, NPY, NPZ, arrays, npy


@dataclass(frozen=True)
class Samples:
    images: np.ndarray  # (n, H, W) or (n, H, W, 3) in [0, 1]
    latents: np.ndarray  # (n, latent_dim)
    seed: int
    model: str


@dataclass(frozen=True)
class Encoding:
    mean: np.ndarray  # (N, latent_dim)
    log_var: np.ndarray  # (N, latent_dim)
    z: np.ndarray | None  # (N, samples, latent_dim), or None without samples
    model: str


@dataclass(frozen=True)
class Evidence:
    """Per input, in nats."""

    elbo: np.ndarray
    reconstruction: np.ndarray
    kl: np.ndarray
    log_likelihood: np.ndarray
    gap: np.ndarray
    model: str


@dataclass(frozen=True)
class Anomaly:
    score: np.ndarray  # higher is more anomalous
    percentile: np.ndarray  # share of the calibration set scoring lower, 0–100
    outlier: np.ndarray  # percentile >= threshold
    log_likelihood: np.ndarray
    statistics: dict[str, np.ndarray]
    maps: np.ndarray | None  # |x − E[x|z=μ]| per pixel, shaped as the images
    model: str


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    read: Callable[[httpx.Response], object]
    params: dict = field(default_factory=dict)
    content: bytes | None = None
    json: dict | None = None
    headers: dict = field(default_factory=dict)


def _clean(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


class _Calls:
    """The endpoints as Calls; shared by both clients."""

    binary: bool

    def _images_call(self, path: str, images: Images, options: dict, read) -> Call:
        x = batch(images)
        options = _clean(options)
        if self.binary:
            params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in options.items()}
            return Call("POST", path, read, params=params, content=npy(x),
                        headers={"content-type": NPY, "accept": NPZ})  # fmt: skip
        return Call("POST", path, read, json={"inputs": x.tolist(), **options})

    def _sample(self, n: int, seed: int | None, temperature: float, model: str | None) -> Call:
        def read(response):
            if self.binary:
                a = arrays(response.content, response.headers["content-type"])
                return Samples(a["images"], a["latents"], int(response.headers["x-seed"]), response.headers["x-model"])
            body = response.json()
            return Samples(np.asarray(body["images"], np.float32), np.asarray(body["latents"], np.float32),
                           body["seed"], body["model"])  # fmt: skip

        body = _clean({"n": n, "seed": seed, "temperature": temperature, "model": model})
        return Call("POST", "/sample", read, json=body, headers={"accept": NPZ if self.binary else JSON})

    def _encode(self, images: Images, samples: int, seed: int | None, model: str | None) -> Call:
        def read(response):
            a = self._arrays(response)
            return Encoding(a["mean"], a["log_var"], a.get("z"), response.headers.get("x-model", a.get("model")))

        return self._images_call("/encode", images, {"samples": samples, "seed": seed, "model": model}, read)

    def _decode(self, latents, model: str | None) -> Call:
        z = np.asarray(latents, dtype=np.float32)
        z = z[None] if z.ndim == 1 else z

        def read(response):
            return self._arrays(response)["images"]

        if self.binary:
            return Call("POST", "/decode", read, params=_clean({"model": model}), content=npy(z),
                        headers={"content-type": NPY, "accept": NPZ})  # fmt: skip
        return Call("POST", "/decode", read, json=_clean({"latents": z.tolist(), "model": model}))

    def _elbo(self, images: Images, samples: int, seed: int | None, model: str | None) -> Call:
        def read(response):
            a = self._arrays(response)
            return Evidence(a["elbo"], a["reconstruction"], a["kl"], a["log_likelihood"], a["gap"],
                            response.headers.get("x-model", a.get("model")))  # fmt: skip

        return self._images_call("/elbo", images, {"samples": samples, "seed": seed, "model": model}, read)

    def _anomaly(self, images: Images, samples: int, seed: int | None, threshold: float, maps: bool,
                 model: str | None) -> Call:  # fmt: skip
        def read(response):
            a = self._arrays(response)
            stats = a.pop("statistics", None) or {
                k.removeprefix("statistic_"): v for k, v in a.items() if k.startswith("statistic_")
            }
            return Anomaly(a["score"], a["percentile"], a["outlier"].astype(bool), a["log_likelihood"],
                           {k: np.asarray(v) for k, v in stats.items()}, a.get("maps"),
                           response.headers.get("x-model", a.get("model")))  # fmt: skip

        options = {"samples": samples, "seed": seed, "threshold": threshold, "maps": maps or None, "model": model}
        return self._images_call("/anomaly", images, options, read)

    def _arrays(self, response: httpx.Response) -> dict:
        """An answer's arrays by name: from NPZ, or JSON lists as float32 arrays."""
        if self.binary:
            return arrays(response.content, response.headers["content-type"])
        body = response.json()
        out = {}
        for name, value in body.items():
            if isinstance(value, list):
                out[name] = np.asarray(value, dtype=bool if name == "outlier" else np.float32)
            elif isinstance(value, dict):
                out[name] = {k: np.asarray(v, np.float32) for k, v in value.items()}
            else:
                out[name] = value
        return out


def _headers(api_key: str | None, timeout: float) -> dict[str, str]:
    headers = {"X-Timeout-Ms": str(int(timeout * 1000))}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _pause(attempt: int, response: httpx.Response | None) -> float:
    """Retry-After when the server gives it, else exponential backoff; jittered either way."""
    base = 0.1 * 2**attempt
    if response is not None and response.headers.get("retry-after", "").isdigit():
        base = float(response.headers["retry-after"])
    return base * (0.5 + random.random())


def _settle(call: Call, attempt: int, retries: int, response: httpx.Response | None, error: Exception | None,
            base_url) -> tuple[bool, object]:  # fmt: skip
    """The retry policy, without I/O: (True, the answer) when the call is done, (False, the pause)
    when it should be sent again; an error answer, a timeout or a last failure raises."""
    last = attempt == retries
    if isinstance(error, httpx.TimeoutException):
        raise Timeout(0, str(error), f"no answer within the client's timeout: {error}") from error
    if error is not None:
        if last:
            raise VaeError(0, str(error), f"cannot reach {base_url}: {error}") from error
        return False, _pause(attempt, None)
    if response.status_code == 503 and not last:
        return False, _pause(attempt, response)
    if response.status_code >= 400:
        raise from_response(response)
    return True, call.read(response)


class Client(_Calls):
    """``Client(base_url, api_key=None, timeout=30.0, retries=3)``; a context manager."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
                 binary: bool = True, transport: httpx.BaseTransport | None = None):  # fmt: skip
        self.retries, self.binary = retries, binary
        self.http = httpx.Client(base_url=base_url, headers=_headers(api_key, timeout), timeout=timeout,
                                 transport=transport)  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: Call):
        attempt = 0
        while True:  # the last attempt always settles: it answers or raises
            response, error = None, None
            try:
                response = self.http.request(call.method, call.path, params=call.params, content=call.content,
                                             json=call.json, headers=call.headers)  # fmt: skip
            except httpx.TransportError as exc:
                error = exc
            done, value = _settle(call, attempt, self.retries, response, error, self.http.base_url)
            if done:
                return value
            time.sleep(value)
            attempt += 1

    def sample(
        self, n: int = 1, seed: int | None = None, temperature: float = 1.0, model: str | None = None
    ) -> Samples:
        return self._send(self._sample(n, seed, temperature, model))

    def encode(self, images: Images, samples: int = 0, seed: int | None = None, model: str | None = None) -> Encoding:
        return self._send(self._encode(images, samples, seed, model))

    def decode(self, latents, model: str | None = None) -> np.ndarray:
        return self._send(self._decode(latents, model))

    def elbo(self, images: Images, samples: int = 1, seed: int | None = None, model: str | None = None) -> Evidence:
        return self._send(self._elbo(images, samples, seed, model))

    def anomaly(self, images: Images, samples: int = 100, seed: int | None = None, threshold: float = 99.0,
                maps: bool = False, model: str | None = None) -> Anomaly:  # fmt: skip
        return self._send(self._anomaly(images, samples, seed, threshold, maps, model))

    def models(self) -> list[dict]:
        return self._send(Call("GET", "/models", lambda r: r.json()["models"]))

    def health(self) -> dict:
        """The readiness answer: {"status": "ready", "models": [...]} (Busy while warming up or draining)."""
        return self._send(Call("GET", "/health/ready", lambda r: r.json()))


class AsyncClient(_Calls):
    """The same methods, awaited: ``async with AsyncClient(base_url) as vae: await vae.sample(4)``."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 3,
                 binary: bool = True, transport: httpx.AsyncBaseTransport | None = None):  # fmt: skip
        self.retries, self.binary = retries, binary
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key, timeout), timeout=timeout,
                                      transport=transport)  # fmt: skip

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(self, call: Call):
        attempt = 0
        while True:  # as Client._send, awaited
            response, error = None, None
            try:
                response = await self.http.request(call.method, call.path, params=call.params, content=call.content,
                                                   json=call.json, headers=call.headers)  # fmt: skip
            except httpx.TransportError as exc:
                error = exc
            done, value = _settle(call, attempt, self.retries, response, error, self.http.base_url)
            if done:
                return value
            await asyncio.sleep(value)
            attempt += 1

    async def sample(self, n: int = 1, seed: int | None = None, temperature: float = 1.0,
                     model: str | None = None) -> Samples:  # fmt: skip
        return await self._send(self._sample(n, seed, temperature, model))

    async def encode(self, images: Images, samples: int = 0, seed: int | None = None,
                     model: str | None = None) -> Encoding:  # fmt: skip
        return await self._send(self._encode(images, samples, seed, model))

    async def decode(self, latents, model: str | None = None) -> np.ndarray:
        return await self._send(self._decode(latents, model))

    async def elbo(self, images: Images, samples: int = 1, seed: int | None = None,
                   model: str | None = None) -> Evidence:  # fmt: skip
        return await self._send(self._elbo(images, samples, seed, model))

    async def anomaly(self, images: Images, samples: int = 100, seed: int | None = None, threshold: float = 99.0,
                      maps: bool = False, model: str | None = None) -> Anomaly:  # fmt: skip
        return await self._send(self._anomaly(images, samples, seed, threshold, maps, model))

    async def models(self) -> list[dict]:
        return await self._send(Call("GET", "/models", lambda r: r.json()["models"]))

    async def health(self) -> dict:
        return await self._send(Call("GET", "/health/ready", lambda r: r.json()))
