"""The service's noise: Philox4x32-10 against its published answers, the normals' statistics, and a
seed's values independent of the batch, the chunk and the neighbours it is drawn with."""

import asyncio

import numpy as np
import pytest
from scipy import stats

from service.batcher import Batcher
from service.noise import Noise, draw, normals, philox4x32

M = 0xFFFFFFFF
# Random123's kat_vectors: counter (4 words), key (2 words) -> output (4 words)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M, M, M, M), (M, M), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_gives_the_published_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32(counter, key)) == expected


def test_philox_is_vectorized_over_counters_and_keys():
    counters = [np.array([c[i] for c, _, _ in KNOWN_ANSWERS], np.uint64) for i in range(4)]
    keys = [np.array([k[i] for _, k, _ in KNOWN_ANSWERS], np.uint64) for i in range(2)]
    words = np.stack([np.asarray(w) for w in philox4x32(counters, keys)], axis=1)
    assert words.tolist() == [list(e) for _, _, e in KNOWN_ANSWERS]


def test_the_normals_are_standard_normal_and_independent_across_seeds_and_lines():
    values = normals(np.arange(200), np.arange(200) % 7, 500).astype(np.float64)  # (200, 500)
    flat = values.ravel()
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    # neighbouring seeds, lines and lanes are uncorrelated
    for a, b in ((values[:-1], values[1:]), (values[:, :-1], values[:, 1:]), (values[:, 0::4], values[:, 1::4])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02


def test_a_piece_draws_what_it_draws_whole_and_among_others():
    whole = Noise.of(7, (3, 10, 5), axis=1)  # (K, B, Z)
    alone = draw([whole])
    mixed = draw([Noise.of(1, (3, 2, 5), axis=1), whole.take(0, 4), Noise.of(9, (3, 1, 5), axis=1), whole.take(4, 10)])
    assert alone.shape == (3, 10, 5) and alone.dtype == np.float32 and alone.flags.c_contiguous
    np.testing.assert_array_equal(mixed[:, 2:6], alone[:, :4])
    np.testing.assert_array_equal(mixed[:, 7:], alone[:, 4:])
    assert not np.array_equal(mixed[:, :2], alone[:, :2])  # another seed, other values


def test_taking_rows_past_the_end_stops_at_the_end_as_slicing_does():
    noise = Noise.of(1, (2, 10, 3), axis=1)
    assert noise.take(8, 16).shape == (2, 2, 3) and noise.take(12, 16).shape == (2, 0, 3)
    np.testing.assert_array_equal(draw([noise.take(8, 16)]), draw([noise])[:, 8:16])


def test_a_request_not_a_multiple_of_the_chunk_runs_whole():
    """608 rows of K = 1 in chunks of 128: the last chunk is 96 rows, its noise too."""

    async def main():
        batcher = Batcher(lambda i: {"out": i["x"] + i["eps"][0]}, {"x": 0, "eps": 1, "out": 0}, max_batch_rows=128)
        x = np.zeros((608, 3), np.float32)
        result = await batcher.submit({"x": x, "eps": Noise.of(5, (1, 608, 3), axis=1)})
        await batcher.close()
        return result

    result = asyncio.run(main())
    np.testing.assert_array_equal(result["out"], draw([Noise.of(5, (1, 608, 3), axis=1)])[0])


def test_a_scale_multiplies_its_own_rows_only():
    scaled = draw([Noise.of(3, (2, 4), axis=0, scale=0.5), Noise.of(3, (2, 4), axis=0)])
    np.testing.assert_array_equal(scaled[:2], scaled[2:] * np.float32(0.5))


def test_a_seed_gives_identical_bytes_alone_and_inside_a_mixed_batch_of_64():
    """Through the batcher: one request alone, then the same among 63 others (other seeds and sizes,
    and explicit arrays) coalesced into one run."""
    runs = []

    def decoder(inputs):
        runs.append(len(inputs["z"]))
        return {"image": inputs["z"] * 2}

    requests = [
        {"z": Noise.of(i, (1 + i % 3, 8), axis=0)} if i % 4 else {"z": np.full((2, 8), i, np.float32)}
        for i in range(63)
    ]
    requests.insert(30, {"z": Noise.of(42, (3, 8), axis=0)})

    async def main():
        batcher = Batcher(decoder, {"z": 0}, max_batch_rows=4096, max_delay_s=0.05)
        alone = await batcher.submit({"z": Noise.of(42, (3, 8), axis=0)})
        together = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.close()
        return alone, together

    alone, together = asyncio.run(main())
    assert runs == [3, sum(len(r["z"]) for r in requests)]  # alone, then all 64 in one run
    assert together[30]["z"].tobytes() == alone["z"].tobytes()
    assert together[30]["image"].tobytes() == alone["image"].tobytes()
    for request, result in zip(requests, together):
        if isinstance(request["z"], Noise):
            np.testing.assert_array_equal(result["image"], result["z"] * 2)
        else:  # it sent its own latents: the graph's outputs alone
            assert set(result) == {"image"}
            np.testing.assert_array_equal(result["image"], request["z"] * 2)
