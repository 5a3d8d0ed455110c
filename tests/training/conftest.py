import pytest

from training.config import load_config

# A model small enough to train in seconds on a subset of the real Fashion-MNIST.
TINY = [
    "model.architecture='mlp'",
    "model.hidden=[64]",
    "model.latent_dim=4",
    "data.subset=768",
    "data.validation_size=500",
    "train.batch_size=64",
    "train.epochs=3",
    "train.patience=10",
    "eval.iwae_samples=8",
    "train.threads=1",
    # The plain ELBO on a short schedule: each test turns on the recipe options it is about.
    "train.iwae_samples=1",
    "train.ema_decay=0",
    "train.kl_warmup_epochs=5",
    "train.lr_min=1e-4",
]


@pytest.fixture
def tiny_config():
    def make(*extra):
        return load_config("fashion-mnist", [*TINY, *extra])

    return make
