"""``VAE_WORKERS`` > 1: one port served by N worker processes, each a full replica.

The supervisor (the process ``vae-serve`` started) binds the port once and hands the listening
socket to N workers, forked from a forkserver that imported the app once; the kernel gives each
new connection to one of them. Each worker has
its own batchers and ORT sessions, with the cores divided among them. The supervisor owns what
must agree across workers:

- a control socket (JSON lines): a worker's ``peers.all(call)`` comes here, goes to every worker,
  and the replies go back together (``service.peers``). Loads and unloads are kept and replayed to
  a worker that joins later, so a replacement serves what the others serve;
- Prometheus' multiprocess directory, so any worker's ``/metrics`` counts every worker;
- signals: SIGTERM drains every worker (each answers what it accepted), SIGHUP reaches every
  worker's rescan, SIGINT stops them;
- the workers themselves: one that exits while not draining is logged and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import control
from .control import ABSENT, MULTIPROC_DIR
from .settings import Settings

log = logging.getLogger("service.workers")

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the driver sees
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "QUOTA PERIOD", or "max PERIOD" for no limit
CHECK_EVERY_S = 0.1


def gpu_count() -> int:
    """GPUs that onnxruntime's CUDA provider could use here (0 without the provider or a driver)."""
    if not NVIDIA_GPUS.is_dir():
        return 0
    import onnxruntime as ort  # only on a host with an NVIDIA driver: the supervisor stays light

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    found = len(list(NVIDIA_GPUS.iterdir()))
    return min(found, len([d for d in visible.split(",") if d.strip()])) if visible is not None else found


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup CPU limit (a container's)."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = CGROUP_CPU_MAX.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def default_workers() -> int:
    """One process per GPU on a CUDA host (each owns its device); else one per usable core."""
    return gpu_count() or usable_cores()


def worker_settings(settings: Settings, slot: int, count: int, gpus: int) -> Settings:
    """A worker's settings: ORT's threads divided among the workers (unless set), and its own GPU."""
    update = {"workers": 1}
    if settings.ort_intra_op_threads == 0:
        update["ort_intra_op_threads"] = max(1, usable_cores() // count)
    if gpus:
        update["cuda_device"] = slot % gpus
    return settings.model_copy(update=update)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_worker(settings: Settings, slot: int, sock: socket.socket, control: str) -> None:
    """A worker process's entry: the app with a link to the supervisor, served on the shared socket."""
    from .peers import WorkerLink
    from .server import serve  # in the spawned process: the app and onnxruntime load there, not here

    serve(settings, sockets=[sock], peers=WorkerLink(control, slot))


@dataclass
class Worker:
    slot: int
    process: multiprocessing.Process
    writer: asyncio.StreamWriter | None = None  # its control connection, once it said hello
    pending: dict[int, asyncio.Future] = field(default_factory=dict)


class Supervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.gpus = gpu_count()
        self.workers: dict[int, Worker] = {}
        self.replay: dict[str, dict] = {}  # model name -> its last load or unload, for workers that join later
        self.serving: dict[str, str] = {}  # what every worker served after the last rescan
        self.draining = False
        self._ids = 0
        self._connections: set[asyncio.Task] = set()
        # Workers fork from a clean server process that imported the app once (not from this one,
        # which runs an event loop): each starts in a fraction of the import time.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["service.server"])

    def run(self) -> None:
        own_dir = MULTIPROC_DIR not in os.environ  # the user's own directory is used, and kept
        if own_dir:
            os.environ[MULTIPROC_DIR] = tempfile.mkdtemp(prefix="vae-serve-metrics-")
        metrics_dir = os.environ[MULTIPROC_DIR]
        control_dir = tempfile.mkdtemp(prefix="vae-serve-control-")
        try:
            asyncio.run(self._main(Path(control_dir) / "control.sock"))
        finally:
            shutil.rmtree(control_dir, ignore_errors=True)
            if own_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    async def _main(self, control: Path) -> None:
        sock = bind(self.settings.host, self.settings.port)
        server = await asyncio.start_unix_server(self._connected, str(control), limit=2**24)
        os.chmod(control, 0o600)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._drain)
        loop.add_signal_handler(signal.SIGINT, lambda: self._forward(signal.SIGINT, drain=True))
        loop.add_signal_handler(signal.SIGHUP, lambda: self._rescan("SIGHUP"))
        host, port = sock.getsockname()[:2]
        log.info("supervisor %d: %d workers on http://%s:%d", os.getpid(), self.count, host, port)
        for slot in range(self.count):
            self._spawn(slot, sock, str(control))
        if self.settings.model_control == "poll":
            poll = asyncio.create_task(self._poll())
        while self.workers:
            await asyncio.sleep(CHECK_EVERY_S)
            for worker in list(self.workers.values()):
                if worker.process.is_alive():
                    continue
                self._gone(worker)
                if self.draining:
                    del self.workers[worker.slot]
                else:
                    log.warning("worker %d (pid %d) exited with code %s; starting a replacement",
                                worker.slot, worker.process.pid, worker.process.exitcode)  # fmt: skip
                    self._spawn(worker.slot, sock, str(control))
        if self.settings.model_control == "poll":
            poll.cancel()
        if self._connections:  # each ends at its worker's EOF: let them read it, not be cancelled
            await asyncio.wait(self._connections, timeout=1)
        server.close()
        sock.close()
        log.info("supervisor: every worker has exited")

    def _spawn(self, slot: int, sock: socket.socket, control: str) -> None:
        settings = worker_settings(self.settings, slot, self.count, self.gpus)
        process = self._context.Process(
            target=run_worker, args=(settings, slot, sock, control), name=f"vae-serve-worker-{slot}"
        )
        process.start()
        log.info("worker %d started (pid %d)", slot, process.pid)
        self.workers[slot] = Worker(slot, process)

    def _gone(self, worker: Worker) -> None:
        """A worker's process ended: its open calls count it absent; its live gauges leave the metrics."""
        from prometheus_client import multiprocess

        for future in worker.pending.values():
            if not future.done():
                future.set_result({ABSENT: worker.slot})
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(worker.process.pid)

    def _drain(self) -> None:
        """SIGTERM: every worker drains. Those on the control socket get it as a call, so a worker that
        got SIGTERM itself too (a signal to the process group) drains once instead of stopping at once."""
        self.draining = True
        for worker in self.workers.values():
            if worker.writer is not None and not worker.writer.is_closing():
                asyncio.get_running_loop().create_task(self._ask(worker, {"op": "drain"}))
            else:  # still starting: it has accepted nothing yet
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)

    def _forward(self, sig: int, drain: bool = False) -> None:
        if drain:
            self.draining = True
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.process.pid, sig)

    # ---- the control socket ------------------------------------------------------------------------

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        slot, pid = control.read(await reader.readline()).body
        worker = self.workers.get(slot)
        if worker is None or worker.process.pid != pid:
            writer.close()
            return
        worker.writer = writer
        writer.write(control.message(control.REPLAY, list(self.replay.values())))
        while line := await reader.readline():
            message = control.read(line)
            if message.kind == control.ALL:
                asyncio.create_task(self._fan_out(writer, message.ident, message.body))
            elif (future := worker.pending.pop(message.ident, None)) is not None and not future.done():
                future.set_result(message.body)
        worker.writer = None
        for future in worker.pending.values():  # it hung up: nothing more will come from it
            if not future.done():
                future.set_result({ABSENT: worker.slot})

    async def _poll(self) -> None:
        """Poll mode: every VAE_MODEL_POLL_S, every worker rescans the folder at once (one owner of
        the clock: the workers never follow the folder each on its own)."""
        while not self.draining:
            await asyncio.sleep(self.settings.model_poll_s)
            await self._rescan_all()

    def _rescan(self, why: str) -> None:
        if self.settings.model_control in ("none", "poll") and not self.draining:
            log.info("%s: every worker rescans %s", why, self.settings.model_dir)
            asyncio.get_running_loop().create_task(self._rescan_all())

    async def _rescan_all(self) -> None:
        """Every worker rescans; once all have answered, what they serve is logged when it changed
        (from then on no worker serves what was replaced)."""
        replies = [r for r in await self._everyone({"op": "rescan"}) if ABSENT not in r and "serving" in r]
        serving = (
            replies[0]["serving"] if replies and all(r["serving"] == replies[0]["serving"] for r in replies) else None
        )
        if serving is not None and serving != self.serving:
            self.serving = serving
            log.info("rescan: every worker serves %s", ", ".join(f"{n} {v}" for n, v in sorted(serving.items())))

    async def _everyone(self, call: dict) -> list[dict]:
        """``call`` on every worker, the replies in slot order. A load or unload is kept for workers
        that join later from the moment it is sent, so one that joins while it runs applies it too."""
        if call["op"] in ("load", "unload"):
            self.replay.pop(call["name"], None)
            self.replay[call["name"]] = call
        return await asyncio.gather(*(self._ask(w, call) for w in sorted(self.workers.values(), key=_slot)))

    async def _fan_out(self, asker: asyncio.StreamWriter, ident: int, call: dict) -> None:
        """``call`` on every worker; the replies, in slot order, back to the worker that asked."""
        replies = await self._everyone(call)
        if not asker.is_closing():
            asker.write(control.message(control.REPLIES, replies, ident))

    async def _ask(self, worker: Worker, call: dict) -> dict:
        if worker.writer is None or worker.writer.is_closing():
            return {ABSENT: worker.slot}
        self._ids += 1
        future = worker.pending[self._ids] = asyncio.get_running_loop().create_future()
        worker.writer.write(control.message(control.CALL, call, self._ids))
        return await future


def _slot(worker: Worker) -> int:
    return worker.slot
