"""PNG figures next to a model: training curves, reconstructions, prior samples, latent
traversals, a 2-D map of test latent means by class (PCA beyond two dimensions), and for a
2-D model the decoded manifold. Images of any size, grayscale or RGB."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .train import load_checkpoint, load_data, prepare_eval_images

log = logging.getLogger(__name__)

MAX_INCHES = 20  # a figure's width: large images are shown smaller, not cut


def _grid(images: np.ndarray, rows: int, cols: int, shape: tuple[int, int, int]) -> np.ndarray:
    """(rows·cols, H·W·C) -> one (rows·H, cols·W[, C]) image with 1-pixel gutters."""
    h, w, c = shape
    canvas = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c), dtype=np.float32)
    for i, image in enumerate(images[: rows * cols]):
        r, col = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = image.reshape(h, w, c)
    return canvas[..., 0] if c == 1 else canvas


def _save_image(plt, canvas: np.ndarray, path: Path, title: str) -> None:
    per_pixel = min(1 / 40, MAX_INCHES / canvas.shape[1])
    fig, ax = plt.subplots(figsize=(canvas.shape[1] * per_pixel + 0.5, canvas.shape[0] * per_pixel + 0.8), dpi=100)
    ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _write_map_geometry(fig, ax, center: np.ndarray, components: np.ndarray, path: Path) -> Path:
    """Where the latent map's axes sit in its PNG and how a point there maps back to z, so a
    click on the picture decodes the latent under it: z = center + (p1, p2) @ components."""
    width, height = fig.canvas.get_width_height()
    box = ax.get_position()  # figure fractions, origin bottom-left
    geometry = {
        "image": "latent_map.png",
        "width": width,
        "height": height,
        "axes_px": [
            round(box.x0 * width, 2),
            round((1 - box.y1) * height, 2),
            round(box.x1 * width, 2),
            round((1 - box.y0) * height, 2),
        ],
        "xlim": [float(v) for v in ax.get_xlim()],
        "ylim": [float(v) for v in ax.get_ylim()],
        "center": [float(v) for v in center],
        "components": [[float(v) for v in row] for row in components],
    }
    path.write_text(json.dumps(geometry, indent=1))
    return path


@torch.no_grad()
def write_report(run_dir: Path, out_dir: Path, seed: int = 0) -> list[Path]:
    """Every figure of the best checkpoint into ``out_dir``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, model, _ = load_checkpoint(run_dir / "best.pt")
    splits = load_data(cfg, run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = prepare_eval_images(cfg, splits.test)
    generator = torch.Generator().manual_seed(seed)
    written = [
        *_curves(plt, cfg.name, run_dir / "metrics.jsonl", out_dir),
        _reconstructions(plt, model, test[:32], out_dir),
        _samples(plt, model, generator, out_dir),
        _traversal(plt, model, out_dir),
        *_latent_map(plt, cfg, model, test, splits.test_labels.numpy(), splits.classes, out_dir),
    ]
    if cfg.model.latent_dim == 2:
        written.append(_manifold(plt, model, out_dir))
    log.info("report: %s", ", ".join(p.name for p in written))
    return written


def _curves(plt, name: str, metrics: Path, out_dir: Path) -> list[Path]:
    """Training loss, validation ELBO and its two terms per epoch (none before the first epoch)."""
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not history:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [-h["train_loss"] for h in history], label="train −loss (β-weighted)")
    axes[0].plot(epochs, [h["val_elbo"] for h in history], label="validation ELBO")
    axes[0].set_xlabel("epoch"), axes[0].set_ylabel("nats"), axes[0].legend(fontsize=8)
    axes[1].plot(epochs, [h["val_kl"] for h in history], label="validation KL")
    axes[1].plot(epochs, [-h["val_reconstruction"] for h in history], label="validation −E[log p(x|z)]")
    axes[1].set_xlabel("epoch"), axes[1].set_yscale("log"), axes[1].legend(fontsize=8)
    fig.suptitle(f"{name}: training curves", fontsize=10)
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def _reconstructions(plt, model, x: torch.Tensor, out_dir: Path) -> Path:
    """32 test images (B, D) beside their reconstructions from the posterior mean."""
    mean, _ = model.encoder(x)
    recon = model.mean_image(mean).numpy()
    paired = np.concatenate([x.numpy()[:16], recon[:16], x.numpy()[16:32], recon[16:32]])
    path = out_dir / "reconstructions.png"
    _save_image(
        plt,
        _grid(paired, 4, 16, model.cfg.image_shape),
        path,
        "test images (rows 1, 3) and reconstructions from E_q[z] (rows 2, 4)",
    )
    return path


def _samples(plt, model, generator: torch.Generator, out_dir: Path) -> Path:
    z = torch.randn((64, model.cfg.latent_dim), generator=generator)  # (64, Z)
    path = out_dir / "samples.png"
    _save_image(plt, _grid(model.mean_image(z).numpy(), 8, 8, model.cfg.image_shape), path, "E[x|z], z ~ N(0, I)")
    return path


def _traversal(plt, model, out_dir: Path) -> Path:
    """Each of the first 10 latent dimensions from −3 to 3, the others 0."""
    z_dim = model.cfg.latent_dim
    dims = min(z_dim, 10)
    steps = torch.linspace(-3, 3, 11)
    z = torch.zeros((dims, len(steps), z_dim))  # (dims, steps, Z)
    for d in range(dims):
        z[d, :, d] = steps
    path = out_dir / "traversal.png"
    title = f"latent traversal: dimension d (row) from −3 to 3, others 0 (first {dims})"
    _save_image(
        plt, _grid(model.mean_image(z.reshape(-1, z_dim)).numpy(), dims, len(steps), model.cfg.image_shape), path, title
    )
    return path


def _latent_map(
    plt, cfg, model, test: torch.Tensor, labels: np.ndarray, classes: tuple[str, ...], out_dir: Path
) -> list[Path]:
    """The test set's posterior means by class, on z (2-D) or its two principal directions, and
    the geometry that turns a click on the picture back into z."""
    z_dim = cfg.model.latent_dim
    means = torch.cat([model.encoder(test[i : i + 2000])[0] for i in range(0, len(test), 2000)]).numpy()  # (N, Z)
    if z_dim > 2:
        center = means.mean(0)
        _, _, vt = np.linalg.svd(means - center, full_matrices=False)
        components, axis_label = vt[:2], "principal component"  # (2, Z)
    else:
        center, components, axis_label = np.zeros(2, np.float32), np.eye(2, dtype=np.float32), "z"
    points = (means - center) @ components.T  # (N, 2)
    fig, ax = plt.subplots(figsize=(6.2, 5), dpi=100)
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=2, alpha=0.6, label=classes[c] or None)
    ax.set_xlabel(f"{axis_label} 1"), ax.set_ylabel(f"{axis_label} 2")
    if any(classes):
        ax.legend(markerscale=5, fontsize=7, loc="best")
    ax.set_title("test latent means E_q[z] by class", fontsize=10)
    fig.tight_layout()
    path = out_dir / "latent_map.png"
    fig.savefig(path)
    geometry = _write_map_geometry(fig, ax, center, components, out_dir / "latent_map.json")
    plt.close(fig)
    return [path, geometry]


def _manifold(plt, model, out_dir: Path) -> Path:
    """A 2-D model's decoded manifold on a grid of N(0, 1) quantiles."""
    n = 20
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.025, 0.975, n))
    grid = torch.stack(torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy"), -1).reshape(-1, 2)  # (n², 2)
    path = out_dir / "manifold.png"
    title = "decoded manifold: z on a grid of N(0, 1) quantiles (z1 across, z2 down)"
    _save_image(plt, _grid(model.mean_image(grid).numpy(), n, n, model.cfg.image_shape), path, title)
    return path
