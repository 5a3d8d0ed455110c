"""What a request is while it waits for a run: its inputs, its size and cost, and the future its
answer comes back on. The batcher makes and runs them; observers read them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

Tensors = dict[str, np.ndarray]  # a queued job's inputs may hold a Noise, drawn when its batch runs


@dataclass(eq=False, slots=True)
class Job:
    inputs: Tensors
    rows: int  # size along the batch axis
    cost: int  # rows × weight: what counts against max_batch_rows (e.g. K × B decoder rows)
    signature: tuple  # jobs coalesce only with jobs whose non-batch shapes match
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)
    queued: bool = True  # False once a run has taken it: past that point it is never dropped
    deadline: float | None = None  # a perf_counter value: still queued then, it is dropped (DeadlineExceeded)
    trace: object = None  # the request's span context, set by a tracing observer (None: not traced)
