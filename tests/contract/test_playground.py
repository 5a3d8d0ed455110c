"""The playground page in headless Debian Chromium (Playwright), against the live server.

Screenshots go to ``test-artifacts/`` (or ``$VAE_TEST_ARTIFACTS``); the README's picture is one.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("VAE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = "/usr/bin/chromium"  # Debian's package: Playwright never downloads a browser here
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# Pixel statistics of an <img>, read back through a canvas: proves a real picture was decoded.
IMAGE_STATS = """(img) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sum2 = 0, n = d.length / 4;
  for (let i = 0; i < d.length; i += 4) { sum += d[i]; sum2 += d[i] * d[i]; }
  const std = Math.sqrt(Math.max(0, sum2 / n - (sum / n) ** 2));
  return {w: img.naturalWidth, h: img.naturalHeight, mean: sum / n, std: std};
}"""


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1250})
    page = context.new_page()
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "response",
        lambda response: errors.append(f"{response.status} {response.url}") if response.status >= 400 else None,
    )
    page.goto(server + "/")
    expect(page.locator("#sample-grid img")).to_have_count(16, timeout=20_000)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"playground-{request.node.name}.png", full_page=True)
    context.close()
    assert errors == [], f"console errors: {errors}"


def loaded(page, selector: str, timeout: float = 15_000) -> dict:
    page.wait_for_function(
        "(s) => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=timeout,
    )
    return page.locator(selector).evaluate(IMAGE_STATS)


def test_page_loads_with_the_default_model_and_a_grid_of_real_samples(page):
    expect(page.locator("#model")).to_have_value("fashion-mnist")
    expect(page.locator('#metadata dd[data-field="latent dim"]')).to_have_text("32")
    expect(page.locator('#metadata dd[data-field="likelihood"]')).to_have_text("bernoulli")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#sample-grid img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    stats = page.locator("#sample-grid img").evaluate_all(f"(imgs) => imgs.map({IMAGE_STATS})")
    assert all(s["w"] == 28 and s["h"] == 28 for s in stats)
    assert all(s["std"] > 10 for s in stats)  # not blank: each sample has an object on a background
    assert len({round(s["mean"], 3) for s in stats}) > 12  # and they differ from one another


def test_moving_a_slider_changes_the_decoded_image(page):
    before = loaded(page, "#decoded")
    src = page.locator("#decoded").get_attribute("src")
    page.locator("#z-0").focus()
    page.keyboard.press("End")  # the slider to +3, as a user's keyboard would
    expect(page.locator("#z-0 + output")).to_have_text("3.00")
    page.wait_for_function("(old) => document.querySelector('#decoded').getAttribute('src') !== old", arg=src)
    after = loaded(page, "#decoded")
    assert after["mean"] != before["mean"]
    page.click("#reset")
    expect(page.locator("#z-0 + output")).to_have_text("0.00")


def test_clicking_two_samples_fills_the_interpolation_strip(page):
    page.locator("#sample-grid img").nth(0).click()
    page.locator("#sample-grid img").nth(5).click()
    expect(page.locator("#strip img")).to_have_count(10)
    loaded(page, "#strip img:last-child")


def test_drawing_and_encoding_shows_the_scores_and_a_reconstruction(page):
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + pad["width"] * 0.5, pad["y"] + pad["height"] * 0.15)
    page.mouse.down()
    for fx, fy in ((0.5, 0.85), (0.3, 0.85), (0.7, 0.85), (0.5, 0.5), (0.25, 0.3)):
        page.mouse.move(pad["x"] + pad["width"] * fx, pad["y"] + pad["height"] * fy, steps=8)
    page.mouse.up()
    page.click("#encode")
    number = re.compile(r"^-?\d+\.\d\d$")
    for field in ("elbo", "reconstruction", "kl", "log_likelihood", "gap"):
        expect(page.locator(f"#score-{field}")).to_have_text(number, timeout=15_000)
    score = {f: float(page.locator(f"#score-{f}").inner_text()) for f in ("elbo", "kl", "log_likelihood", "gap")}
    assert score["kl"] > 0 and score["gap"] >= 0 and score["log_likelihood"] >= score["elbo"]
    assert loaded(page, "#reconstruction")["std"] > 10
    expect(page.locator("#score-anomaly")).to_have_text(re.compile(r"^-?\d+\.\d\d( \(outlier\))?$"))
    percentile = float(page.locator("#score-percentile").inner_text())  # a hand drawing beside the calibration
    assert 0 <= percentile <= 100


def test_the_model_picker_switches_models_and_the_2d_map_decodes_a_click(page):
    page.select_option("#model", "fashion-mnist-2d")
    expect(page.locator("#sliders input")).to_have_count(2)
    expect(page.locator('#metadata dd[data-field="latent dim"]')).to_have_text("2")
    expect(page.locator("#manifold-figure")).to_be_visible()
    loaded(page, "#manifold")
    loaded(page, "#latent-map")
    box = page.locator("#latent-map").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.5)
    expect(page.locator("#map-z")).to_have_text(re.compile(r"^z = \(-?\d+\.\d\d, -?\d+\.\d\d\)$"))
    assert loaded(page, "#map-decoded")["std"] > 10
    page.select_option("#model", "fashion-mnist-gaussian")
    expect(page.locator("#sliders input")).to_have_count(16)
    expect(page.locator("#manifold-figure")).to_be_hidden()


def test_a_whole_tour_on_one_page(page):
    """Samples, an interpolation, a drawing scored and a click on the map, all at once (the README's picture)."""
    page.locator("#sample-grid img").nth(1).click()
    page.locator("#sample-grid img").nth(2).click()
    expect(page.locator("#strip img")).to_have_count(10)
    pad = page.locator("#pad").bounding_box()
    page.mouse.move(pad["x"] + pad["width"] * 0.3, pad["y"] + pad["height"] * 0.2)
    page.mouse.down()
    for fx, fy in ((0.3, 0.85), (0.7, 0.85), (0.7, 0.2), (0.3, 0.2)):
        page.mouse.move(pad["x"] + pad["width"] * fx, pad["y"] + pad["height"] * fy, steps=6)
    page.mouse.up()
    page.click("#encode")
    expect(page.locator("#score-log_likelihood")).to_have_text(re.compile(r"^-?\d+\.\d\d$"))
    box = page.locator("#latent-map").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.45)
    expect(page.locator("#map-z")).to_have_text(re.compile(r"^PC = "))
    loaded(page, "#map-decoded")


def test_uploading_an_image_encodes_and_scores_it(page, tmp_path):
    pixels = np.zeros((56, 56), np.uint8)
    pixels[8:48, 16:40] = 255  # a bright block on black, at twice the pad's size: the page scales it down
    Image.fromarray(pixels, mode="L").save(tmp_path / "upload.png")
    page.set_input_files("#upload", str(tmp_path / "upload.png"))
    expect(page.locator("#score-log_likelihood")).to_have_text(re.compile(r"^-?\d+\.\d\d$"), timeout=15_000)
    drawn = page.locator("#pad").evaluate(
        "(c) => Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)"
        ".filter((v, i) => i % 4 == 0 && v > 128).length"
    )
    assert 150 < drawn < 350  # about 20 × 12 bright pixels landed on the 28×28 pad
    assert loaded(page, "#reconstruction")["std"] > 10


def test_with_api_keys_the_page_asks_for_one_and_then_works(browser, tmp_path):
    from .conftest import start_server

    server, url = start_server(ROOT / "models", tmp_path / "server.log", api_keys="playground-key")
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url + "/")  # /models is open; /sample answers 401 until the key is given
        expect(page.locator("#status")).to_contain_text("API key", timeout=15_000)
        page.fill("#api-key", "playground-key")
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#sample-grid img")).to_have_count(16, timeout=15_000)
        page.reload()  # the key is remembered in localStorage
        expect(page.locator("#sample-grid img")).to_have_count(16, timeout=15_000)
        context.close()
    finally:
        server.stop()


def test_the_api_docs_render_with_the_network_cut(browser, server):
    """/docs loads Swagger UI from the service itself: with every request off 127.0.0.1 refused,
    the page still lists the operations."""
    context = browser.new_context()
    outside = []

    def only_loopback(route):
        if route.request.url.startswith(server):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.goto(server + "/docs")
    expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=20_000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/encode", "/decode", "/sample", "/elbo", "/v2/models/{name}/infer"} <= {p.strip() for p in paths}
    assert outside == []  # nothing was even asked of the internet
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "docs-offline.png")
    context.close()
