"""The Open Inference Protocol's operations, written once for both of its transports: HTTP
(``routes/oip.py``, ``routes/repository.py``) and gRPC (``grpc_server.py``).

Each takes the app's state and what the request said, applies the rules (``rules``), runs what it
must, and returns plain values or raises a domain error; the transport turns them into its own
messages and status codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from . import rules
from .errors import Conflict, InvalidInput, ModelUnavailable, ServiceUnavailable, UnknownModel
from .jobs import Tensors
from .manifest import GraphSpec
from .metrics import merge_reports
from .oip_codec import InferRequest
from .peers import cluster_not_ready, raise_errors
from .registry import LOADING, READY, Registry
from .runtime import ModelRuntime

STATES = {READY: "READY", LOADING: "LOADING"}  # Triton's states; anything else is UNAVAILABLE


def find_graph(registry: Registry, name: str, version: str | None = None) -> tuple[ModelRuntime, str]:
    """``fashion-mnist-decoder`` -> (the fashion-mnist runtime, "decoder"); UnknownModel for anything else."""
    model_name, _, graph = name.rpartition("-")
    try:
        runtime = registry.resolve(model_name)
    except ModelUnavailable as exc:
        reason = registry.entries[model_name].reason or "loading"
        raise ModelUnavailable(f"model {name!r} is unavailable: {reason}") from exc
    except UnknownModel:
        runtime = None
    if runtime is None or not model_name or graph not in runtime.batchers:
        example = next(iter(graph_names(registry)), "none")
        raise UnknownModel(f"unknown model {name!r}; models are <model>-<graph>, e.g. {example}")
    if version is not None and version != runtime.version:
        raise UnknownModel(f"model {name!r} has no version {version!r} (it serves {runtime.version!r})")
    return runtime, graph


def graph_names(registry: Registry) -> list[str]:
    return [f"{m}-{g}" for m, runtime in registry.models.items() for g in runtime.batchers]


async def server_ready(state) -> None:
    if problem := await cluster_not_ready(state):
        raise ServiceUnavailable(f"not ready: {problem}")


async def model_ready(state, name: str, version: str | None = None) -> None:
    find_graph(state.registry, name, version)
    if problem := await cluster_not_ready(state):
        raise ServiceUnavailable(f"model {name!r} is not ready: {problem}")


async def statistics(
    state, headers: Mapping[str, str], name: str | None = None, version: str | None = None
) -> list[dict]:
    """Triton's statistics of one graph (or of every graph), summed over every worker process (API key)."""
    rules.authorize(headers, state.settings.api_key_list)
    if name is not None:
        find_graph(state.registry, name, version)
    replies = raise_errors(await state.peers.all({"op": "stats"}))
    by_name: dict[str, list[dict]] = {}
    for reply in replies:
        for report in reply["stats"]:
            by_name.setdefault(report["name"], []).append(report)
    return [merge_reports(reports) for graph, reports in by_name.items() if name is None or graph == name]


async def infer(
    state,
    headers: Mapping[str, str],
    name: str,
    version: str | None,
    parse: Callable[[GraphSpec], InferRequest],
    wait: Callable[[Awaitable[Tensors]], Awaitable[Tensors]] | None = None,
    transport_timeout_s: float | None = None,
) -> tuple[ModelRuntime, InferRequest, Tensors]:
    """One graph on the request's tensors: the API key, the graph, the tensors (``parse``), the size
    and deadline rules, the run. The deadline is ``parameters.timeout``, else the transport's own
    (gRPC's deadline), else the server's default; ``wait`` awaits the run (HTTP watches for the
    client leaving)."""
    settings = state.settings
    rules.authorize(headers, settings.api_key_list)
    runtime, graph = find_graph(state.registry, name, version)
    spec = runtime.manifest.graphs[graph]
    parsed = parse(spec)
    first = next(iter(parsed.inputs))
    rows = parsed.inputs[first].shape[spec.batch_axes[first]]
    samples = parsed.inputs["eps"].shape[0] if "eps" in parsed.inputs else 0  # K: each row costs K graph rows
    rules.check_size(settings, rows, samples, rows_field="inputs")
    if parsed.timeout_s is not None:
        deadline = rules.deadline(settings, parsed.timeout_s, ("body", "parameters", "timeout"))
    else:
        deadline = rules.deadline(settings, transport_timeout_s, ("header", "grpc-timeout"))
    work = runtime.infer(graph, parsed.inputs, weight=max(1, samples), deadline=deadline)
    results = await (wait(work) if wait is not None else work)
    return runtime, parsed, results


# ---- the model repository extension (admin key; load and unload in explicit mode only) -------------
# Each operation checks its key itself, first: every transport gets the same rule from the same place.


def repository_index(state, headers: Mapping[str, str], ready_only: bool) -> list[dict]:
    rules.authorize_admin(headers, state.settings.admin_key_list)
    entries = [e for e in state.registry.entries.values() if e.state == READY or not ready_only]
    return [
        {"name": e.name, "version": e.version or "", "state": STATES.get(e.state, "UNAVAILABLE")}
        | ({"reason": e.reason} if e.reason else {})
        for e in sorted(entries, key=lambda e: e.name)
    ]


def _explicit(state, action: str) -> None:
    mode = state.settings.model_control
    if mode != "explicit":
        raise Conflict(f"{action} is for VAE_MODEL_CONTROL=explicit; in {mode!r} mode the repository folder decides")


async def load(state, headers: Mapping[str, str], name: str, parameters: Mapping) -> None:
    """Load (or swap to) the newest version of ``name`` on every worker process; returns when all of
    them serve it. A model loads from its folder: Triton's config and file overrides are refused."""
    rules.authorize_admin(headers, state.settings.admin_key_list)
    overrides = [key for key in parameters if key == "config" or key.startswith("file:")]
    if overrides:
        raise InvalidInput(f"{', '.join(overrides)}: a model loads from its folder here; copy the files there instead")
    _explicit(state, "load")
    for reply in raise_errors(await state.peers.all({"op": "load", "name": name})):
        entry = reply["entry"]
        if entry["state"] != READY:
            raise InvalidInput(f"failed to load {name!r}: {entry['reason']}")
        if refused := entry.get("refused"):  # the old version still serves: say why the new one did not
            raise InvalidInput(f"failed to load {name!r} version {refused['version']}: {refused['reason']}")


async def unload(state, headers: Mapping[str, str], name: str) -> None:
    """Stop serving ``name`` on every worker process (its queued requests finish first)."""
    rules.authorize_admin(headers, state.settings.admin_key_list)
    _explicit(state, "unload")
    raise_errors(await state.peers.all({"op": "unload", "name": name}))
