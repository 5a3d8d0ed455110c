"""Model versions loaded, swapped and unloaded on a running service, under load, with no request failing.

The repository is made here from the smallest shipped model: version N has its weights scaled by
1 + N/100 (so each version answers differently) and ``"version": "N"`` in its manifest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.manifest import sha256_of

from .conftest import ROOT, start_server

SOURCE = ROOT / "models" / "fashion-mnist-2d"
ADMIN = "admin-key"
REQUEST = {"model": "m", "n": 2, "seed": 7}


def make_version(folder: Path, version: int) -> Path:
    """``folder`` as a copy of the 2-D model, weights scaled by 1 + version/100, manifest version ``version``."""
    shutil.copytree(SOURCE, folder)
    weights = np.fromfile(folder / "weights.bin", dtype="<f4") * np.float32(1 + version / 100)
    weights.astype("<f4").tofile(folder / "weights.bin")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = str(version)
    manifest["weights"]["sha256"] = sha256_of(folder / "weights.bin")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN}"}


def served(url: str, name: str = "m") -> httpx.Response:
    return httpx.post(f"{url}/sample", json={**REQUEST, "model": name}, timeout=30)


class Traffic:
    """Clients sending REQUEST in a loop until stopped: every answer's status, version and images."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.clients, self.answers, self.stop = url, clients, [], asyncio.Event()

    async def client(self):
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                r = await http.post("/sample", json=REQUEST)
                images = np.asarray(r.json()["images"]) if r.status_code == 200 else None
                self.answers.append((r.status_code, r.headers.get("x-model-version"), images))

    async def during(self, work):
        """Run ``work`` (a blocking function, in a thread) while the clients send; bounded by the work."""
        tasks = [asyncio.create_task(self.client()) for _ in range(self.clients)]
        await asyncio.sleep(0.3)
        try:
            return await asyncio.wait_for(asyncio.to_thread(work), timeout=120)
        finally:
            await asyncio.sleep(0.3)
            self.stop.set()
            await asyncio.gather(*tasks)

    def check(self, references: dict[str, np.ndarray]) -> set[str]:
        """No answer but 200, and each one exactly its version's: never a mix. Returns the versions seen."""
        assert [a[0] for a in self.answers if a[0] != 200] == []
        for _, version, images in self.answers:
            np.testing.assert_array_equal(images, references[version])
        return {a[1] for a in self.answers}


@pytest.fixture
def repository(tmp_path):
    root = tmp_path / "models"
    make_version(root / "m" / "1", 1)
    shutil.copytree(SOURCE, root / "other")
    return root


def start(repository, tmp_path, **settings):
    return start_server(repository, tmp_path / "server.log", default_model="other", **settings)


def reference(url: str, version: str) -> np.ndarray:
    answer = served(url)
    assert answer.status_code == 200 and answer.headers["x-model-version"] == version
    return np.asarray(answer.json()["images"])


@pytest.mark.slow
def test_swapping_versions_through_the_repository_api_under_load_fails_no_request(repository, tmp_path):
    server, url = start(repository, tmp_path, model_control="explicit", admin_keys=ADMIN)
    try:
        references = {"1": reference(url, "1")}
        traffic = Traffic(url)

        def swaps():  # in a thread of its own: tritonclient (gevent) needs a client per thread
            client = triton.InferenceServerClient(url.removeprefix("http://"))
            for version in (2, 3):
                make_version(repository / "m" / str(version), version)
                client.load_model("m", headers=admin())  # returns once the new version serves
                references[str(version)] = reference(url, str(version))  # every new request: the new version
            shutil.rmtree(repository / "m" / "3")
            shutil.rmtree(repository / "m" / "2")
            client.load_model("m", headers=admin())  # back to 1: the highest left
            assert served(url).headers["x-model-version"] == "1"

        asyncio.run(traffic.during(swaps))
        assert traffic.check(references) >= {"1", "2"}  # the old and the new served meanwhile
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        index = {m["name"]: m for m in client.get_model_repository_index(headers=admin())}
        assert index["m"] == {"name": "m", "version": "1", "state": "READY"}
        assert httpx.get(f"{url}/health/ready").status_code == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_poll_mode_picks_up_versions_and_folders_and_drops_removed_ones(repository, tmp_path):
    server, url = start(repository, tmp_path, model_control="poll", model_poll_s=0.5)
    try:
        references = {"1": reference(url, "1")}
        traffic = Traffic(url)

        def changes():
            make_version(repository / "m" / "2", 2)
            deadline = time.monotonic() + 2 * 0.5 + 5  # two poll intervals, and the load itself
            while served(url).headers.get("x-model-version") != "2":
                assert time.monotonic() < deadline, "version 2 was not picked up"
                time.sleep(0.05)
            references["2"] = reference(url, "2")

        asyncio.run(traffic.during(changes))
        assert traffic.check(references) >= {"1", "2"}
        shutil.copytree(SOURCE, repository / "added")
        shutil.rmtree(repository / "other")
        deadline = time.monotonic() + 6
        while served(url, "added").status_code != 200 or served(url, "other").status_code != 404:
            assert time.monotonic() < deadline, "poll mode did not add and drop the folders"
            time.sleep(0.1)
        states = {m["name"]: m["state"] for m in httpx.get(f"{url}/models").json()["models"]}
        assert states == {"m": "ready", "added": "ready", "other": "unloaded"}
    finally:
        server.stop()


def break_weights(folder: Path) -> str:
    weights = folder / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-64])  # truncated: its sha256 no longer matches
    return "sha256"


def break_shapes(folder: Path) -> str:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["decoder"]["outputs"]["image"] = [-1, 28, 28]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return "image has shape"


def break_version(folder: Path) -> str:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = "7"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return "version '7' in folder"


@pytest.mark.parametrize("breaks", [break_weights, break_shapes, break_version])
def test_a_broken_version_is_refused_while_the_old_one_serves(repository, tmp_path, breaks):
    server, url = start(repository, tmp_path, model_control="explicit", admin_keys=ADMIN)
    try:
        before = served(url)
        expected = breaks(make_version(repository / "m" / "2", 2))
        load = httpx.post(f"{url}/v2/repository/models/m/load", headers=admin(), timeout=60)
        assert load.status_code == 400 and expected in load.json()["error"]
        after = served(url)
        assert after.status_code == 200 and after.headers["x-model-version"] == "1"
        assert after.json()["images"] == before.json()["images"]
        described = httpx.get(f"{url}/models/m").json()
        assert described["state"] == "ready" and described["version"] == "1"
        assert described["refused"]["version"] == "2" and expected in described["refused"]["reason"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'vae_model_loads_total{model="m",result="refused"} 1.0' in metrics
    finally:
        server.stop()


def test_unload_and_the_admin_key(repository, tmp_path):
    server, url = start(repository, tmp_path, model_control="explicit", admin_keys=ADMIN)
    try:
        unload = f"{url}/v2/repository/models/m/unload"
        assert httpx.post(unload, timeout=30).status_code == 401
        assert httpx.post(unload, headers={"X-API-Key": "wrong"}, timeout=30).status_code == 401
        assert httpx.post(unload, headers={"X-API-Key": ADMIN}, timeout=30).status_code == 200
        gone = served(url)
        assert gone.status_code == 404 and "unloaded" in gone.json()["detail"]
        assert served(url, "other").status_code == 200  # the others are unaffected
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        index = {m["name"]: m for m in client.get_model_repository_index(headers=admin())}
        assert index["m"]["state"] == "UNAVAILABLE" and index["m"]["reason"] == "unloaded"
        client.load_model("m", headers=admin())
        assert served(url).status_code == 200
        with pytest.raises(InferenceServerException, match="API key"):
            client.load_model("m")
    finally:
        server.stop()


def test_repository_bodies_are_read_as_triton_defines_them_and_bad_ones_are_400s(repository, tmp_path):
    server, url = start(repository, tmp_path, model_control="explicit", admin_keys=ADMIN)
    try:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        client.unload_model("m", headers=admin(), unload_dependents=True)
        repository_index = f"{url}/v2/repository/index"
        every = httpx.post(repository_index, headers=admin(), timeout=30).json()
        ready = httpx.post(repository_index, json={"ready": True}, headers=admin(), timeout=30).json()
        assert {m["name"] for m in every} == {"m", "other"} and [m["name"] for m in ready] == ["other"]
        load = f"{url}/v2/repository/models/m/load"
        bodies = {
            '{"parameters": {"config": "{}"}}': "config: a model loads from its folder",
            '{"parameters": {"file:1/weights.bin": "AAAA"}}': "file:1/weights.bin: a model loads from its folder",
            '{"parameters": 5}': "'parameters' must be a JSON object",
            "[1, 2]": "the body must be a JSON object",
            "{not json": "JSON decode error",
            '{"parameters": ' + "[" * 5000 + "]" * 5000 + "}": "nested too deeply",
        }
        for body, message in bodies.items():
            refused = httpx.post(load, content=body, headers=admin(), timeout=30)
            assert refused.status_code == 400 and message in refused.json()["error"], (body[:40], refused.text)
        bad_filter = httpx.post(repository_index, json={"ready": "yes"}, headers=admin(), timeout=30)
        assert bad_filter.status_code == 400 and "'ready' must be true or false" in bad_filter.json()["error"]
        assert served(url).status_code == 404  # nothing above loaded it
        client.load_model("m", headers=admin())
        assert served(url).status_code == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_without_admin_keys_the_repository_api_is_off_and_none_mode_refuses_load(repository, tmp_path):
    server, url = start(repository, tmp_path)
    try:
        off = httpx.post(f"{url}/v2/repository/index", timeout=30)
        assert off.status_code == 403 and "VAE_ADMIN_KEYS" in off.json()["error"]
    finally:
        server.stop()
    server, url = start(repository, tmp_path, admin_keys=ADMIN)  # model_control none
    try:
        load = httpx.post(f"{url}/v2/repository/models/m/load", headers=admin(), timeout=30)
        assert load.status_code == 409 and "VAE_MODEL_CONTROL=explicit" in load.json()["error"]
    finally:
        server.stop()


@pytest.mark.slow
def test_sighup_rescans_in_none_mode(repository, tmp_path):
    server, url = start(repository, tmp_path)
    try:
        assert served(url).headers["x-model-version"] == "1"
        make_version(repository / "m" / "2", 2)
        time.sleep(1)
        assert served(url).headers["x-model-version"] == "1"  # none mode: no poll
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served(url).headers["x-model-version"] != "2":
            assert time.monotonic() < deadline, "SIGHUP did not rescan"
            time.sleep(0.1)
        assert server.process.poll() is None  # SIGHUP rescans; it does not stop the server
    finally:
        server.stop()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_unloading_releases_the_memory_a_load_took(tmp_path):
    root = tmp_path / "models"
    shutil.copytree(SOURCE, root / "small")
    server, url = start_server(
        root, tmp_path / "server.log", default_model="small", model_control="explicit", admin_keys=ADMIN, workers=1
    )  # fmt: skip  (the RSS of the one process that serves)
    try:
        names = [f"big{i}" for i in range(6)]
        before = rss_mb(server.process.pid)
        for name in names:  # the largest shipped model, six times
            shutil.copytree(ROOT / "models" / "fashion-mnist", root / name)
            assert httpx.post(f"{url}/v2/repository/models/{name}/load", headers=admin(), timeout=60).status_code == 200
            assert httpx.post(f"{url}/sample", json={"model": name, "n": 64}, timeout=30).status_code == 200
        loaded = rss_mb(server.process.pid)
        for name in names:
            assert (
                httpx.post(f"{url}/v2/repository/models/{name}/unload", headers=admin(), timeout=60).status_code == 200
            )
        time.sleep(1)  # retired versions close once idle
        after = rss_mb(server.process.pid)
        assert loaded - before > 20  # the loads took real memory
        assert after - before < 0.5 * (loaded - before), (before, loaded, after)
    finally:
        server.stop()
