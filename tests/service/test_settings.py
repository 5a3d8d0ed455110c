"""Settings: defaults in one place, and limits that contradict each other refused at start."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_the_defaults_are_consistent():
    settings = Settings()
    assert settings.max_request_rows <= settings.max_queue_rows and settings.max_sample_rows <= settings.max_queue_rows


@pytest.mark.parametrize("field", ["max_request_rows", "max_sample_rows"])
def test_a_per_request_limit_above_the_queue_limit_is_refused(field):
    with pytest.raises(ValidationError, match=f"VAE_{field.upper()} \\(4096\\) is above VAE_MAX_QUEUE_ROWS \\(2048\\)"):
        Settings(**{"max_queue_rows": 2048, "max_request_rows": 1, "max_sample_rows": 1, field: 4096})


def test_the_server_refuses_to_start_with_a_clear_message():
    env = {"VAE_MAX_QUEUE_ROWS": "2048", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "vae-serve: invalid settings: " in result.stderr and "VAE_MAX_SAMPLE_ROWS (262144)" in result.stderr
