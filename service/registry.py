"""The models a service serves, by name and version, and their lifecycle: load, swap, unload.

The model repository (``VAE_MODEL_DIR``) holds a folder per model: its manifest directly (one
version, named by the manifest), or numbered version folders ``1/``, ``2/``… (Triton's layout),
of which the highest serves. A new version is loaded, checked and warmed up beside the old one,
off the event loop; then ``models`` switches to it in one assignment. Requests that started on
the old version finish on it; it is closed when none is left. A version that fails any check
is refused with one log line and a metric, and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelUnavailable, UnknownModel
from .metrics import Metrics
from .runtime import ModelRuntime, load_model, requested_providers
from .settings import Settings

log = logging.getLogger(__name__)

LOADING, READY, FAILED, UNLOADED = "loading", "ready", "failed", "unloaded"


@dataclass(frozen=True)
class Found:
    """One model folder's version to serve, and what identifies its files (a change: a new version)."""

    name: str
    path: Path  # the folder of the manifest
    version: str | None  # the numbered folder's name; None when the manifest sits in the model's folder
    stamp: tuple  # (path, size, mtime) of the manifest


@dataclass
class Entry:
    """What /models and the repository index say of a name."""

    name: str
    state: str  # loading, ready, failed, unloaded
    version: str | None = None  # the version serving (or last tried, when failed)
    reason: str | None = None  # why it is not serving (failed, unloaded)
    refused: dict | None = None  # a newer version refused while this one serves: {version, reason}
    stamp: tuple | None = None  # the files last loaded or refused

    def describe(self) -> dict:
        found = {"name": self.name, "state": self.state, "version": self.version}
        return found | {k: v for k, v in (("reason", self.reason), ("refused", self.refused)) if v is not None}


def find(folder: Path) -> Found | None:
    """The version a model folder serves: its highest numbered subfolder with a manifest, else itself."""
    numbered = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and (p / "manifest.json").is_file()]
    if numbered:
        path = max(numbered, key=lambda p: int(p.name))
        version = path.name
    elif (folder / "manifest.json").is_file():
        path, version = folder, None
    else:
        return None
    stat = (path / "manifest.json").stat()
    return Found(folder.name, path, version, (str(path), stat.st_size, stat.st_mtime_ns))


def scan(root: Path) -> dict[str, Found]:
    if not root.is_dir():
        return {}
    found = (find(folder) for folder in sorted(root.iterdir()) if folder.is_dir() and not folder.name.startswith("."))
    return {f.name: f for f in found if f is not None}


def release_memory() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise), so RSS falls after an unload."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Registry:
    """Every model by name: ``models`` holds the versions serving now; ``entries`` what to say of each."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, ModelRuntime] = {}
        self.entries: dict[str, Entry] = {}
        self.ready = False
        self.executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="ort")
        self.providers = requested_providers(settings)
        self._changes = asyncio.Lock()  # one load, unload or rescan at a time
        self._retiring: set[asyncio.Task] = set()

    @property
    def default_model(self) -> str:
        return self.settings.default_model

    @property
    def refused(self) -> dict[str, str]:
        """Names that serve nothing because their load failed, with the reason."""
        return {n: e.reason for n, e in self.entries.items() if e.state == FAILED}

    def resolve(self, name: str | None) -> ModelRuntime:
        """The named (or default) model; UnknownModel (404), or ModelUnavailable (503) if it cannot serve now."""
        name = name or self.default_model
        model = self.models.get(name)
        if model is not None:
            return model
        entry = self.entries.get(name)
        if entry is not None and entry.state in (FAILED, LOADING):
            raise ModelUnavailable(f"model {name!r} is unavailable: {entry.reason or 'loading'}")
        available = ", ".join(sorted(self.models)) or "none"
        if entry is not None and entry.state == UNLOADED:
            raise UnknownModel(f"model {name!r} is unloaded; available: {available}")
        raise UnknownModel(f"unknown model {name!r}; available: {available}")

    # ---- at start (in a thread, before the server answers) ---------------------------------------

    def load_all(self) -> None:
        found = scan(self.settings.model_dir)
        if not found:
            log.error("no models found: %s has no <name>/manifest.json", self.settings.model_dir.resolve())
        for item in found.values():
            runtime = self._load(item)
            if runtime is not None:
                self.models[item.name] = runtime
        if self.default_model not in self.models:
            log.warning("default model %r is not being served (served: %s)", self.default_model, sorted(self.models))

    def warm_up(self) -> None:
        started = time.perf_counter()
        runs = sum(model.warm_up() for model in self.models.values())
        self.ready = True
        elapsed = time.perf_counter() - started
        log.info("warm-up done: %d runs over %d models in %.2fs; ready", runs, len(self.models), elapsed)

    def _load(self, item: Found) -> ModelRuntime | None:
        """Load (and, once the server is up, warm) one version; record a refusal instead of raising."""
        entry = self.entries.setdefault(item.name, Entry(item.name, LOADING))
        try:
            runtime = load_model(item.name, item.path, item.version, self.providers, self.settings, self.metrics,
                                 self.executor)  # fmt: skip
            if self.ready and self.settings.warmup:
                runtime.warm_up()  # beside the old version, before any request reaches it
        except Exception as exc:  # any failure refuses this version only
            reason = str(exc).splitlines()[0]
            log.error("model %s version %s refused: %s", item.name, item.version or "(manifest)", reason)
            self.metrics.model_event(item.name, "refused")
            if entry.state == READY:  # the old version keeps serving
                entry.refused, entry.stamp = {"version": item.version, "reason": reason}, item.stamp
            else:
                entry.state, entry.version, entry.reason, entry.stamp = FAILED, item.version, reason, item.stamp
            return None
        self.metrics.model_event(item.name, "loaded")
        entry.state, entry.version, entry.reason, entry.refused, entry.stamp = (
            READY,
            runtime.version,
            None,
            None,
            item.stamp,
        )
        return runtime

    # ---- while serving (on the event loop; the work itself in a thread) --------------------------

    async def load(self, name: str) -> Entry:
        """Load the newest version of ``name`` from the repository if it is not the one serving."""
        async with self._changes:
            item = find(self.settings.model_dir / name) if (self.settings.model_dir / name).is_dir() else None
            if item is None:
                raise UnknownModel(
                    f"no model {name!r} in the repository ({self.settings.model_dir}/{name}/manifest.json)"
                )
            return await self._apply(item)

    async def unload(self, name: str) -> Entry:
        async with self._changes:
            entry = self.entries.get(name)
            if entry is None or entry.state == UNLOADED:
                raise UnknownModel(f"model {name!r} is not loaded")
            self._unload(name)
            return entry

    async def rescan(self) -> None:
        """Poll mode and SIGHUP: load new folders and versions, unload removed folders."""
        async with self._changes:
            found = await asyncio.to_thread(scan, self.settings.model_dir)
            for name in [n for n, e in self.entries.items() if e.state != UNLOADED and n not in found]:
                self._unload(name)
            for item in found.values():
                await self._apply(item)

    def watch(self, owner: bool = True) -> Callable[[], None]:
        """Rescans while serving: every VAE_MODEL_POLL_S in poll mode, and on SIGHUP in none and poll
        modes (as daemons reload). Returns what stops them. A worker of several is not the
        ``owner``: the supervisor decides when every worker rescans (``service.workers``), so the
        workers never follow the folder each on its own clock."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()
        mode = self.settings.model_control if owner else "explicit"

        def rescan_now() -> None:
            task = loop.create_task(self._rescan_logged("SIGHUP"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        hup = mode in ("none", "poll")
        if hup:
            try:
                loop.add_signal_handler(signal.SIGHUP, rescan_now)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (Ray, tests)
                hup = False
        if mode == "poll":
            tasks.add(loop.create_task(self._poll()))

        def stop() -> None:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()

        return stop

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_s)
            await self._rescan_logged("poll")

    async def _rescan_logged(self, why: str) -> None:
        try:
            await self.rescan()
        except Exception:  # a rescan that fails leaves the models as they were
            log.exception("rescan (%s) of %s failed", why, self.settings.model_dir)

    async def _apply(self, item: Found) -> Entry:
        entry = self.entries.get(item.name)
        if entry is not None and entry.stamp == item.stamp and entry.state != UNLOADED:
            return entry  # these files were loaded (or refused) already
        runtime = await asyncio.to_thread(self._load, item)
        if runtime is not None:
            self._swap(item.name, runtime)
        return self.entries[item.name]

    def _swap(self, name: str, runtime: ModelRuntime) -> None:
        old = self.models.get(name)
        self.models[name] = runtime  # one assignment: every request from here on resolves the new version
        if old is not None:
            log.info("model %s: version %s serves; version %s retires when idle", name, runtime.version, old.version)
            self._retire(old)

    def _unload(self, name: str) -> None:
        old = self.models.pop(name, None)
        entry = self.entries[name]
        entry.state, entry.reason, entry.refused, entry.stamp = UNLOADED, "unloaded", None, None
        self.metrics.model_event(name, "unloaded")
        log.info("model %s unloaded", name)
        if old is not None:
            self._retire(old)

    def _retire(self, runtime: ModelRuntime) -> None:
        task = asyncio.get_running_loop().create_task(self._close_when_idle(runtime))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_idle(self, runtime: ModelRuntime) -> None:
        while not runtime.idle:
            await asyncio.sleep(0.05)
        await runtime.close()
        release_memory()
        log.info("model %s version %s closed", runtime.name, runtime.version)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*(model.close() for model in self.models.values()))
        self.executor.shutdown(wait=False, cancel_futures=True)
