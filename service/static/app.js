// The playground: plain JS against the service's own endpoints (/models, /sample, /decode, /encode, /elbo).
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SLIDERS = 16;
const state = { model: null, info: null, z: [], ends: { a: null, b: null }, nextEnd: "a", seq: {} };

async function api(path, body) {
  const headers = { "content-type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["x-api-key"] = key;  // only when the server runs with VAE_API_KEYS
  const response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

// Only the newest answer of each kind is shown: an older request that returns late is dropped.
async function latest(kind, work) {
  const ticket = (state.seq[kind] = (state.seq[kind] || 0) + 1);
  const result = await work();
  return ticket === state.seq[kind] ? result : null;
}

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

const png = (b64) => `data:image/png;base64,${b64}`;
const gaussian = () => Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());

async function decode(latents) {
  const out = await api("/decode", { model: state.model, latents, format: "png" });
  return out.images.map(png);
}

// ---- model picker and metadata
async function loadModels() {
  const listing = await api("/models");
  const select = $("model");
  for (const m of listing.models.filter((m) => m.status === "available")) {
    select.add(new Option(`${m.name} (z = ${m.latent_dim}, ${m.likelihood})`, m.name, false, m.name === listing.default));
  }
  state.catalog = Object.fromEntries(listing.models.map((m) => [m.name, m]));
  select.addEventListener("change", () => selectModel(select.value));
  await selectModel(select.value);
}

function showMetadata(info) {
  const m = info.metrics || {};
  const fmt = (v) => (typeof v === "number" ? v.toFixed(2) : v ?? "–");
  const rows = [
    ["latent dim", info.latent_dim], ["likelihood", info.likelihood], ["architecture", info.architecture],
    ["test ELBO", fmt(m.test_elbo)], [`test log p(x) (K = ${m.iwae_samples ?? "?"})`, fmt(m.test_log_likelihood)],
    ["gap", fmt(m.test_gap)], ["KL", fmt(m.test_kl)], ["active units", m.active_units ?? "–"], ["provider", info.provider],
  ];
  $("metadata").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v; dd.dataset.field = k;
    return [dt, dd];
  }));
}

async function selectModel(name) {
  state.model = name;
  state.info = state.catalog[name];
  state.ends = { a: null, b: null };
  state.nextEnd = "a";
  showMetadata(state.info);
  buildSliders(state.info.latent_dim);
  $("strip").replaceChildren();
  $("end-a").removeAttribute("src");
  $("end-b").removeAttribute("src");
  for (const k of [...SCORES, "anomaly", "percentile"]) $(`score-${k}`).textContent = "–";
  $("reconstruction").removeAttribute("src");
  fitPad(state.info.image_shape);
  $("binarize-note").textContent = (state.info.likelihood === "bernoulli"
    ? "Bernoulli model: the image is binarized at 0.5 for its ELBO, as its test set is (the anomaly score sees it as drawn)."
    : "Gaussian model: continuous pixels are scored; log-densities can be positive.")
    + (state.info.image_shape[2] === 3 ? " Colour model: upload an image (the pad draws in grayscale only)." : "");
  status(`model ${name}`);
  try {
    await Promise.all([sample(), decodeSliders(), loadMap()]);
  } catch (error) {
    status(error.message, true);  // e.g. a server with VAE_API_KEYS: "missing API key: ..."
  }
}

// ---- samples from the prior
async function sample() {
  const body = { model: state.model, n: 16, seed: Number($("seed").value), temperature: Number($("temperature").value), format: "png" };
  const out = await latest("sample", () => api("/sample", body));
  if (!out) return;
  $("sample-grid").replaceChildren(...out.images.map((b64, i) => {
    const img = document.createElement("img");
    img.src = png(b64);
    img.alt = `sample ${i}`;
    img.addEventListener("click", () => { setEnd(out.latents[i], img.src); loadIntoSliders(out.latents[i]); });
    return img;
  }));
}

// ---- latent sliders
function buildSliders(dim) {
  state.z = new Array(dim).fill(0);
  const shown = Math.min(dim, MAX_SLIDERS);
  const parts = [];
  for (let d = 0; d < shown; d++) {
    const label = document.createElement("label");
    label.textContent = `z${d + 1}`;
    label.htmlFor = `z-${d}`;
    const input = Object.assign(document.createElement("input"), { type: "range", min: -3, max: 3, step: 0.05, value: 0, id: `z-${d}` });
    const value = Object.assign(document.createElement("output"), { textContent: "0.00" });
    input.addEventListener("input", () => {
      state.z[d] = Number(input.value);
      value.textContent = state.z[d].toFixed(2);
      debouncedDecode();
    });
    parts.push(label, input, value);
  }
  $("sliders").replaceChildren(...parts);
  $("slider-note").textContent = dim > shown ? `first ${shown} of ${dim} dimensions; the others keep their values` : "";
}

function loadIntoSliders(z) {
  state.z = z.slice();
  document.querySelectorAll("#sliders input").forEach((input, d) => {
    input.value = z[d];
    input.nextElementSibling.textContent = Number(z[d]).toFixed(2);
  });
  decodeSliders();
}

async function decodeSliders() {
  const images = await latest("sliders", () => decode([state.z]));
  if (images) $("decoded").src = images[0];
}
const debouncedDecode = debounce(decodeSliders, 40);

// ---- interpolation
function setEnd(z, src) {
  state.ends[state.nextEnd] = z.slice();
  $(`end-${state.nextEnd}`).src = src;
  state.nextEnd = state.nextEnd === "a" ? "b" : "a";
  interpolate();
}

async function interpolate() {
  const { a, b } = state.ends;
  if (!a || !b) return;
  const steps = Math.max(2, Math.min(16, Number($("steps").value) || 10));
  const latents = Array.from({ length: steps }, (_, i) => a.map((v, d) => v + (b[d] - v) * (i / (steps - 1))));
  const images = await latest("strip", () => decode(latents));
  if (!images) return;
  $("strip").replaceChildren(...images.map((src, i) => Object.assign(document.createElement("img"), { src, alt: `step ${i}` })));
}

// ---- drawing, upload, encode and score: the pad is the model's image_shape [H, W, C]
const PEN_WIDTH = 2.4 / 28;  // the stroke as a share of the pad's width: a pen like MNIST's on its 28-pixel canvas
const clearPad = (ctx) => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, ctx.canvas.width, ctx.canvas.height); };

function fitPad([h, w, c]) {
  const pad = $("pad");
  pad.width = w;
  pad.height = h;
  pad.style.height = `${Math.round(196 * h / w)}px`;
  pad.classList.toggle("colour", c === 3);  // drawing is for grayscale models; upload works for all
  document.documentElement.style.setProperty("--aspect", `${w} / ${h}`);
  clearPad(state.pad);
}

function setupPad() {
  const pad = $("pad");
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  clearPad(ctx);
  let last = null;
  const at = (e) => { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
  const drawable = () => state.info && state.info.image_shape[2] === 1;
  pad.addEventListener("pointerdown", (e) => { if (!drawable()) return; pad.setPointerCapture(e.pointerId); last = at(e); stroke(last, last); });
  pad.addEventListener("pointermove", (e) => { if (last) { const p = at(e); stroke(last, p); last = p; } });
  pad.addEventListener("pointerup", () => { last = null; });
  function stroke(from, to) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = PEN_WIDTH * pad.width; ctx.lineCap = "round";
    ctx.beginPath(); ctx.moveTo(...from); ctx.lineTo(...to); ctx.stroke();
  }
  $("clear").addEventListener("click", () => clearPad(ctx));
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (!file) return;
    const image = new Image();
    image.onload = () => { clearPad(ctx); ctx.drawImage(image, 0, 0, pad.width, pad.height); URL.revokeObjectURL(image.src); encode(); };
    image.src = URL.createObjectURL(file);
  });
  return ctx;
}

function padPixels(ctx, binarize) {
  // H·W·C numbers in [0, 1], numpy order: grayscale by luma, colour as R, G, B
  const [h, w, c] = state.info.image_shape;
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const x = new Array(h * w * c);
  const bernoulli = binarize && state.info.likelihood === "bernoulli";
  for (let i = 0; i < h * w; i++) {
    const channels = c === 1
      ? [(0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]) / 255]
      : [rgba[4 * i] / 255, rgba[4 * i + 1] / 255, rgba[4 * i + 2] / 255];
    channels.forEach((value, k) => {
      const v = $("invert").checked ? 1 - value : value;
      x[i * c + k] = bernoulli ? (v >= 0.5 ? 1 : 0) : Math.round(v * 1000) / 1000;
    });
  }
  return x;
}

const SCORES = ["elbo", "reconstruction", "kl", "log_likelihood", "gap"];

async function showAnomaly(x) {
  // the calibrated out-of-distribution score: only for models exported with a calibration
  if (!state.info.anomaly) { $("score-anomaly").textContent = "not calibrated"; return; }
  // as drawn, not binarized: the calibration saw validation images as they are
  const out = await api("/anomaly", { model: state.model, inputs: [x], seed: 0 });
  $("score-anomaly").textContent = out.score[0].toFixed(2) + (out.outlier[0] ? " (outlier)" : "");
  $("score-percentile").textContent = out.percentile[0].toFixed(1);
}

async function encode() {
  const x = padPixels(state.pad, true);
  try {
    const [posterior, scores] = await Promise.all([
      api("/encode", { model: state.model, inputs: [x] }),
      api("/elbo", { model: state.model, inputs: [x], samples: 100, seed: 0 }),
    ]);
    for (const k of SCORES) $(`score-${k}`).textContent = scores[k][0].toFixed(2);
    await showAnomaly(padPixels(state.pad, false));
    state.encoded = posterior.mean[0];
    const [src] = await decode([state.encoded]);
    $("reconstruction").src = src;
    loadIntoSliders(state.encoded);
    status(`encoded: log p(x) ≈ ${scores.log_likelihood[0].toFixed(1)} nats`);
  } catch (error) {
    status(error.message, true);
  }
}

// ---- latent map (from the model's training report) and, for 2-D models, the manifold
async function loadMap() {
  const files = state.info.report || [];
  const hasMap = files.includes("latent_map.json") && files.includes("latent_map.png");
  $("map-section").hidden = !hasMap;
  $("marker").hidden = true;
  $("map-decoded").removeAttribute("src");
  $("map-z").textContent = "click the map";
  state.map = hasMap ? await api(`/models/${state.model}/report/latent_map.json`) : null;
  if (hasMap) $("latent-map").src = `/models/${state.model}/report/latent_map.png`;
  const manifold = state.info.latent_dim === 2 && files.includes("manifold.png");
  $("manifold-figure").hidden = !manifold;
  if (manifold) $("manifold").src = `/models/${state.model}/report/manifold.png`;
}

async function clickMap(e) {
  const g = state.map;
  const img = $("latent-map");
  const x = e.offsetX * g.width / img.clientWidth, y = e.offsetY * g.height / img.clientHeight;
  const [left, top, right, bottom] = g.axes_px;
  if (x < left || x > right || y < top || y > bottom) return;
  const p1 = g.xlim[0] + (x - left) / (right - left) * (g.xlim[1] - g.xlim[0]);
  const p2 = g.ylim[1] - (y - top) / (bottom - top) * (g.ylim[1] - g.ylim[0]);
  const z = g.center.map((c, d) => c + p1 * g.components[0][d] + p2 * g.components[1][d]);
  Object.assign($("marker").style, { left: `${e.offsetX}px`, top: `${e.offsetY}px` });
  $("marker").hidden = false;
  const images = await latest("map", () => decode([z]));
  if (!images) return;
  $("map-decoded").src = images[0];
  $("map-z").textContent = g.components[0].length === 2 ? `z = (${p1.toFixed(2)}, ${p2.toFixed(2)})` : `PC = (${p1.toFixed(2)}, ${p2.toFixed(2)})`;
}

// ---- wiring
function start() {
  $("api-key").value = localStorage.getItem("vae-api-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("vae-api-key", $("api-key").value.trim()); selectModel(state.model); });
  state.pad = setupPad();  // sized to each model in fitPad
  $("sample").addEventListener("click", sample);
  $("new-seed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e9); sample(); });
  const debouncedSample = debounce(sample, 120);
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = Number($("temperature").value).toFixed(2); debouncedSample(); });
  $("seed").addEventListener("change", sample);
  $("reset").addEventListener("click", () => loadIntoSliders(new Array(state.info.latent_dim).fill(0)));
  $("randomize").addEventListener("click", () => loadIntoSliders(Array.from({ length: state.info.latent_dim }, () => Math.max(-3, Math.min(3, gaussian())))));
  $("steps").addEventListener("change", interpolate);
  $("encode").addEventListener("click", encode);
  $("use-a").addEventListener("click", () => { if (state.encoded) { state.nextEnd = "a"; setEnd(state.encoded, $("reconstruction").src); } });
  $("use-b").addEventListener("click", () => { if (state.encoded) { state.nextEnd = "b"; setEnd(state.encoded, $("reconstruction").src); } });
  $("latent-map").addEventListener("click", clickMap);
  loadModels().catch((error) => status(error.message, true));
}

document.addEventListener("DOMContentLoaded", start);
