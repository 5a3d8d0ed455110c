"""Arrays in and out without HTTP: NPY bodies, Accept negotiation, image shapes and PNGs."""

import io

import numpy as np
import pytest

from service.arrays import JSON, NPY, NPZ, negotiate, npy_bytes, npz_bytes, read_npy
from service.errors import InvalidInput, NotAcceptable


def saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy_round_trips_as_float32(dtype):
    array = np.random.default_rng(0).random((3, 28, 28)).astype(dtype)
    out = read_npy(saved(array), "inputs")
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, array.astype(np.float32))


def test_fortran_order_is_read_as_the_same_array():
    array = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(read_npy(saved(array), "latents"), array)


def test_npy_bytes_is_what_numpy_loads():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(np.load(io.BytesIO(npy_bytes(array))), array)
    archive = np.load(io.BytesIO(npz_bytes({"a": array, "b": array * 2})))
    np.testing.assert_array_equal(archive["b"], array * 2)


def problem(body: bytes) -> str:
    with pytest.raises(InvalidInput) as caught:
        read_npy(body, "inputs")
    assert caught.value.status == 422 and caught.value.loc == ("body", "inputs")
    return caught.value.message


def test_bodies_that_are_not_honest_npy_are_refused_before_decoding():
    good = saved(np.zeros((2, 784), np.float32))
    assert "magic" in problem(b'{"inputs": []}')
    assert "needs 6272 bytes" in problem(good[:-4])  # truncated
    assert "needs 6272 bytes" in problem(good + b"\0" * 4)  # trailing bytes
    assert "dtype '|O'" in problem(saved(np.array([{"a": 1}], dtype=object)))  # a pickle: never loaded
    assert "dtype '<i8'" in problem(saved(np.zeros(3, np.int64)))
    assert "dtype '>f4'" in problem(saved(np.zeros(3, ">f4")))
    lying = good.replace(b"(2, 784)", b"(9, 784)")
    assert "needs 28224 bytes" in problem(lying)
    huge = good.replace(b"(2, 784)", b"(99999999999, 784)")[:200]
    assert "bytes of data" in problem(huge)
    assert "header" in problem(good[:8] + b"\xff\xff" + good[10:])
    assert "shape" in problem(saved(np.zeros((1, 1, 1, 1, 1), np.float32)))


@pytest.mark.parametrize(
    "accept, chosen",
    [
        (None, JSON),
        ("*/*", JSON),
        ("application/json", JSON),
        ("application/*", JSON),
        (NPY, NPY),
        (NPZ, NPZ),
        (f"{NPZ}, {NPY};q=0.5", NPZ),
        (f"{NPY};q=0.2, application/json;q=0.9", JSON),
        ("text/html, application/x-npy", NPY),
    ],
)
def test_accept_picks_the_highest_ranked_offer(accept, chosen):
    assert negotiate(accept) == chosen


def test_an_accept_we_cannot_answer_is_406():
    with pytest.raises(NotAcceptable) as caught:
        negotiate("text/html, image/png")
    assert caught.value.status == 406 and "application/x-npy" in caught.value.message
