"""NPY bodies in, NPY/NPZ out: the same numbers as the JSON API, and honest errors."""

import io

import numpy as np
import pytest

NPY, NPZ = "application/x-npy", "application/x-npz"


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def load(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


def test_decode_npy_both_ways_equals_json(client):
    z = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    response = client.post("/decode", content=npy(z), headers={"content-type": NPY, "accept": NPY})
    assert response.headers["content-type"] == NPY and response.headers["x-array"] == "images"
    binary = load(response)
    as_json = client.post("/decode", json={"latents": z.tolist()}).json()
    assert binary.dtype == np.float32 and binary.shape == (5, 28, 28)
    np.testing.assert_array_equal(binary, np.asarray(as_json["images"], dtype=np.float32))


def test_npy_request_takes_its_options_from_the_query(client):
    z = np.zeros((2, 2), np.float32)
    response = client.post("/decode?model=fashion-mnist-2d", content=npy(z), headers={"content-type": NPY})
    assert response.status_code == 200 and response.json()["model"] == "fashion-mnist-2d"  # JSON out by default


def test_encode_npy_in_npz_out(client):
    x = images(3).reshape(3, 28, 28)
    response = client.post("/encode?samples=4&seed=7", content=npy(x), headers={"content-type": NPY, "accept": NPZ})
    assert response.headers["content-type"] == NPZ
    archive = np.load(io.BytesIO(response.content), allow_pickle=False)
    as_json = client.post("/encode", json={"inputs": x.tolist(), "samples": 4, "seed": 7}).json()
    assert archive["z"].shape == (3, 4, 32)
    for name in ("mean", "log_var", "z"):
        np.testing.assert_array_equal(archive[name], np.asarray(as_json[name], dtype=np.float32))


def test_elbo_npy_returns_log_likelihood_and_npz_every_term(client):
    x = images(4, seed=3)
    headers = {"content-type": NPY}
    main = load(client.post("/elbo?samples=16&seed=1", content=npy(x), headers={**headers, "accept": NPY}))
    archive = np.load(
        io.BytesIO(client.post("/elbo?samples=16&seed=1", content=npy(x), headers={**headers, "accept": NPZ}).content)
    )
    as_json = client.post("/elbo", json={"inputs": x.tolist(), "samples": 16, "seed": 1}).json()
    assert main.shape == (4,)
    np.testing.assert_array_equal(main, np.asarray(as_json["log_likelihood"], dtype=np.float32))
    assert set(archive.files) == {"elbo", "reconstruction", "kl", "log_likelihood", "gap"}
    # gap comes from the score graph; the difference of two float32 scores of ~200 nats rounds at ~1e-5
    np.testing.assert_allclose(archive["gap"], archive["log_likelihood"] - archive["elbo"], atol=1e-3)


def test_sample_answers_npy_with_the_seed_in_a_header(client):
    response = client.post("/sample", json={"n": 3, "seed": 11}, headers={"accept": NPY})
    images_ = load(response)
    assert images_.shape == (3, 28, 28) and response.headers["x-seed"] == "11"
    assert response.headers["x-other-arrays"] == "latents"
    as_json = client.post("/sample", json={"n": 3, "seed": 11}).json()
    np.testing.assert_array_equal(images_, np.asarray(as_json["images"], dtype=np.float32))


@pytest.mark.parametrize(
    "path, query, body, field, message",
    [
        ("/decode", "", npy(np.zeros((2, 5))), "latents", "expected 32 numbers"),
        ("/decode", "", b"not npy at all", "latents", "magic"),
        ("/decode", "", npy(np.zeros((2, 32)))[:-8], "latents", "bytes of data"),
        ("/encode", "", npy(np.full((1, 784), 2.0)), "inputs", "outside [0, 1]"),
        ("/encode", "", npy(np.full((1, 784), np.nan)), "inputs", "non-finite"),
        ("/encode", "", npy(np.zeros((1, 27, 28))), "inputs", "got shape [27, 28]"),
        ("/encode", "", npy(np.zeros((0, 784))), "inputs", "at least 1"),
        ("/elbo", "?samples=0", npy(images(1)), "samples", "greater than or equal to 1"),
        ("/elbo", "?samples=many", npy(images(1)), "samples", "valid integer"),
        ("/elbo", "?colour=red", npy(images(1)), "colour", "Extra inputs are not permitted"),
        ("/encode", "", npy(np.zeros((257, 784))), "inputs", "limit of 256"),
    ],
)
def test_bad_npy_requests_are_422_naming_the_field(client, path, query, body, field, message):
    response = client.post(path + query, content=body, headers={"content-type": NPY})
    assert response.status_code == 422, response.text
    text = str(response.json()["detail"])
    assert field in text and message in text, text


def test_an_option_in_both_query_and_body_is_422(client):
    response = client.post("/sample?n=2", json={"n": 3})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "n"]


def test_npy_to_sample_is_415_and_an_unanswerable_accept_is_406(client):
    assert client.post("/sample", content=npy(np.zeros((1, 32))), headers={"content-type": NPY}).status_code == 415
    response = client.post("/sample", json={"n": 1}, headers={"accept": "image/gif"})
    assert response.status_code == 406 and NPY in response.json()["detail"]


def png_b64(pixels: np.ndarray) -> str:
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_base64_png_inputs_score_like_the_same_pixels_as_numbers(client):
    pixels = (np.random.default_rng(4).random((2, 28, 28)) < 0.3).astype(np.uint8) * 255
    as_png = client.post("/elbo", json={"inputs": [png_b64(p) for p in pixels], "samples": 4, "seed": 3}).json()
    as_numbers = client.post(
        "/elbo", json={"inputs": (pixels / 255.0).reshape(2, 784).tolist(), "samples": 4, "seed": 3}
    ).json()
    assert as_png["log_likelihood"] == as_numbers["log_likelihood"]
    data_url = client.post("/encode", json={"inputs": ["data:image/png;base64," + png_b64(pixels[0])]})
    assert data_url.status_code == 200


@pytest.mark.parametrize(
    "item, message",
    [
        ("not base64!", "not valid base64"),
        ("aGVsbG8=", "not a PNG image"),
        (png_b64(np.zeros((29, 28))), "PNG is 28×29; expected 28×28"),
        ("A" * 70000, "over the 65536 allowed"),
        (png_b64(np.zeros((28, 28)))[:60] + "AAAA" * 10, "corrupt"),
    ],
)
def test_hostile_png_inputs_are_422_before_decoding(client, item, message):
    response = client.post("/encode", json={"inputs": [item]})
    assert response.status_code == 422, response.text
    assert message in str(response.json()["detail"])


def test_png_and_number_images_do_not_mix(client):
    response = client.post("/encode", json={"inputs": [png_b64(np.zeros((28, 28))), [0.0] * 784]})
    assert response.status_code == 422 and "base64 PNG string like the other inputs" in str(response.json()["detail"])
