"""The service's own noise: N(0, 1) values keyed by a request's seed and each value's index, drawn
for a whole batch in one vectorized call.

A request's noise (``/sample``'s latents, ε of ``/encode``, ``/elbo`` and ``/anomaly``) is not an
array when it is queued but a ``Noise``: its seed, its shape and the rows of it this piece covers.
The batcher draws the noise of every job in a batch at once (``draw``), in its executor thread,
so a request costs no generator of its own, and a seed gives the same values alone, in any
batch, in any chunk and on any worker.

The construction is counter-based: value (k, b, j) of a request's (K, B, Z) noise is lane
j mod 4 of Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
it passes TestU01's BigCrush) with key = the 64-bit seed and counter = (j div 4, line, 0) where
line = k·B + b; each pair of 32-bit words becomes two normals by the Box–Muller transform.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

MASK = np.uint64(0xFFFFFFFF)
SHIFT = np.uint64(32)
MULTIPLIERS = np.array([0xCD9E8D57, 0xD2511F53], np.uint64)  # Philox4x32's M1, M0 (the order x holds)
WEYL = np.array([0x9E3779B9, 0xBB67AE85], np.uint64)  # its key schedule's constants W0, W1
ROUNDS = 10
TWO_PI = 2.0 * np.pi
LANES = 4  # 32-bit words a Philox4x32 counter gives: four normals


def philox4x32(counter: tuple[np.ndarray, ...], key: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 of four broadcastable arrays of 32-bit words (held in uint64) under a two-word key.

    The state is two stacked pairs, x = (c2, c0) and y = (c1, c3), so a round is five array
    operations: both 32 × 32 → 64-bit products at once, the xors, and the swap as a view.
    """
    c0, c1, c2, c3, k0, k1 = np.broadcast_arrays(*(np.asarray(v, dtype=np.uint64) for v in (*counter, *key)))
    x, y, k = np.stack([c2, c0]), np.stack([c1, c3]), np.stack([k0, k1])  # (2, ...)
    multipliers, weyl = (v.reshape(2, *([1] * c0.ndim)) for v in (MULTIPLIERS, WEYL))
    for r in range(ROUNDS):
        if r:
            k = (k + weyl) & MASK
        product = x * multipliers  # (c2·M1, c0·M0): 32 × 32 → 64 bits
        high = product >> SHIFT
        high ^= y
        high ^= k  # (hi1 ^ c1 ^ k0, hi0 ^ c3 ^ k1): the new (c0, c2)
        y = product & MASK  # (lo1, lo0): the new (c1, c3)
        x = high[::-1]
    return x[1], y[0], x[0], y[1]


def box_muller(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent N(0, 1) from two 32-bit words: u1 in (0, 1] (so log u1 is finite), u2 in [0, 1).
    The tails end at sqrt(2 ln 2³²) ≈ 6.66: a mass of 2.6e-11 is left out."""
    radius = np.sqrt(-2.0 * np.log((a.astype(np.float64) + 1.0) * 2.0**-32))
    angle = b.astype(np.float64) * (TWO_PI * 2.0**-32)
    return radius * np.cos(angle), radius * np.sin(angle)


def normals(seeds: np.ndarray, lines: np.ndarray, width: int) -> np.ndarray:
    """float32 (..., width) of N(0, 1): for each (seed, line) pair (broadcast together), values 0..width-1."""
    seeds, lines = np.broadcast_arrays(np.asarray(seeds, np.uint64), np.asarray(lines, np.uint64))
    seeds, lines = seeds[..., None], lines[..., None]
    blocks = np.arange(-(-width // LANES), dtype=np.uint64)  # (W/4,)
    words = philox4x32((blocks, lines & MASK, lines >> SHIFT, np.uint64(0)), (seeds & MASK, seeds >> SHIFT))
    n0, n1 = box_muller(words[0], words[1])
    n2, n3 = box_muller(words[2], words[3])
    out = np.stack([n0, n1, n2, n3], axis=-1).astype(np.float32)  # (..., W/4, 4)
    return np.ascontiguousarray(out.reshape(*out.shape[:-2], -1)[..., :width])


@dataclass(frozen=True, slots=True)
class Noise:
    """A request's N(0, scale²) input of ``shape`` (the batch axis ``axis``), drawn when its batch runs.

    ``rows`` is the whole request's size on the batch axis and ``start`` this piece's first row
    in it: a request cut into chunks draws the same values as it would whole.
    """

    seed: int
    shape: tuple[int, ...]  # this piece's shape; the last axis is the value axis (Z)
    axis: int
    rows: int
    start: int = 0
    scale: float = 1.0
    dtype = np.dtype(np.float32)

    @classmethod
    def of(cls, seed: int, shape: tuple[int, ...], axis: int, scale: float = 1.0) -> Noise:
        return cls(seed, tuple(shape), axis, shape[axis], 0, scale)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, start: int, stop: int) -> Noise:
        """Rows ``start:stop`` of this piece along the batch axis (clamped to it, as slicing is)."""
        start, stop = min(start, self.shape[self.axis]), min(stop, self.shape[self.axis])
        shape = list(self.shape)
        shape[self.axis] = stop - start
        return replace(self, shape=tuple(shape), start=self.start + start)


def draw(pieces: list[Noise]) -> np.ndarray:
    """The pieces' values, concatenated along their batch axis, in one vectorized call.

    The pieces share their shape but for the batch axis (one batch's jobs do); a piece's line
    index for (k, b) is k·rows + start + b, so its values depend on its request alone.
    """
    first = pieces[0]
    axis, width = first.axis, first.shape[-1]
    if axis != len(first.shape) - 2:
        raise ValueError(f"noise of shape {first.shape} needs its batch axis next to its value axis, not {axis}")
    sizes = [p.shape[axis] for p in pieces]
    seeds = np.repeat(np.array([p.seed for p in pieces], np.uint64), sizes)  # (R,)
    offsets = np.repeat(np.array([p.start for p in pieces], np.int64) - np.cumsum([0, *sizes[:-1]]), sizes)
    rows = np.repeat(np.array([p.rows for p in pieces], np.int64), sizes)  # each row's request size
    within = np.arange(len(seeds), dtype=np.int64) + offsets  # each row's index in its request
    outer = first.shape[:axis]  # (K,) for ε; () for /sample's latents
    lead = np.arange(int(np.prod(outer)), dtype=np.int64).reshape(*outer, 1)  # (..., 1)
    lines = lead * rows + within  # (..., R)
    values = normals(seeds, lines, width)  # (..., R, Z)
    scales = np.array([p.scale for p in pieces], np.float32)
    if np.any(scales != 1.0):
        values *= np.repeat(scales, sizes)[:, None]
    return values
