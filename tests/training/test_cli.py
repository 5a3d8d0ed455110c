"""The training CLI: bad arguments end in one clear line and exit code 2, never a traceback.

The CLI's ``main`` runs in-process (an uncaught exception would fail the test with its
traceback); one test runs ``python -m training`` itself, the entry point users type.
"""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from training.__main__ import main


@pytest.fixture
def run_cli(capsys):
    def run(*args) -> SimpleNamespace:
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "no-such-model"], "config 'no-such-model' not found"),
        (["train", "fashion-mnist", "--set", "model.latent_dim=0"], "model.latent_dim must be >= 1"),
        (["train", "fashion-mnist", "--set", "model.latent_dim=big"], "model.latent_dim must be an integer"),
        (["train", "fashion-mnist", "--set", "train.optimizer=sgd"], "unknown config key(s): train.optimizer"),
        (["train", "fashion-mnist", "--set", "epochs"], "must look like section.key=value"),
        (["train", "fashion-mnist", "--set", "model.likelihood='poisson'"], "model.likelihood must be"),
        (["train", "fashion-mnist", "--device", "tpu"], "train.device must be"),
        (["train", "fashion-mnist", "--data-dir", "/nonexistent"], "missing /nonexistent/train-images"),
        (["evaluate", "fashion-mnist", "--runs-dir", "/nonexistent"], "not found: run `python -m training train"),
        (["export", "fashion-mnist", "--runs-dir", "/nonexistent"], "train first"),
        (["reexport", "/nonexistent/model"], "manifest.json not found: name a folder of an exported model"),
        (["train", "fashion-mnist", "--set", "train.init_from=/nonexistent/model"], "manifest.json not found"),
    ],
)
def test_bad_arguments_give_clear_errors(run_cli, args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA (CI's kind)")
def test_cuda_without_a_gpu_is_a_clear_error(run_cli):
    result = run_cli("train", "fashion-mnist", "--device", "cuda")
    assert result.returncode == 2 and "torch sees no CUDA device" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_and_missing_config_are_argparse_errors(run_cli):
    result = run_cli("bake", "fashion-mnist")
    assert result.returncode == 2 and "invalid choice: 'bake'" in result.stderr
    result = run_cli("train")
    assert result.returncode == 2 and "config" in result.stderr


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "evaluate", "report", "export", "fit", "reexport"):
        assert command in result.stdout


def test_the_reproduce_command_is_the_training_line_as_fit():
    from training.__main__ import reproduce_command

    argv = [
        "train",
        "fashion-mnist",
        "--set",
        "train.epochs=5",
        "--resume",
        "--no-progress",
        "--set",
        "model.hidden=[32, 64]",
    ]
    assert (
        reproduce_command(argv)
        == "python -m training fit fashion-mnist --set train.epochs=5 --set 'model.hidden=[32, 64]'"
    )
