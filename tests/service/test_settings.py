"""Settings: defaults in one place; derived defaults follow what they derive from; values the user set that
contradict each other are refused at start."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_the_defaults_are_consistent():
    settings = Settings()
    assert settings.max_request_rows <= settings.max_queue_rows and settings.max_sample_rows <= settings.max_queue_rows
    assert settings.request_timeout_ms <= settings.max_request_timeout_ms


def test_a_lone_queue_limit_lowers_the_per_request_limits_the_user_did_not_set():
    settings = Settings(max_queue_rows=2048)
    assert (settings.max_queue_rows, settings.max_request_rows, settings.max_sample_rows) == (2048, 1024, 2048)
    small = Settings(max_queue_rows=8, max_batch_rows=4)
    assert (small.max_request_rows, small.max_sample_rows, small.max_batch_rows) == (8, 8, 4)


def test_a_lone_per_request_limit_raises_the_queue_limit_it_would_exceed():
    settings = Settings(max_sample_rows=1_000_000)
    assert settings.max_queue_rows == 1_000_000 and settings.max_request_rows == 1024


def test_a_lone_default_timeout_raises_the_cap_it_would_exceed():
    settings = Settings(request_timeout_ms=600_000)
    assert settings.max_request_timeout_ms == 600_000
    assert Settings(max_request_timeout_ms=1000).request_timeout_ms == 1000


@pytest.mark.parametrize("field", ["max_request_rows", "max_sample_rows"])
def test_a_per_request_limit_set_above_a_queue_limit_set_is_refused(field):
    with pytest.raises(ValidationError, match=f"VAE_{field.upper()} \\(4096\\) is above VAE_MAX_QUEUE_ROWS \\(2048\\)"):
        Settings(**{"max_queue_rows": 2048, field: 4096})


def test_the_server_starts_with_only_the_queue_limit_set_and_refuses_a_real_contradiction():
    env = {"PATH": "/usr/bin:/bin", "VAE_MAX_QUEUE_ROWS": "2048", "VAE_MAX_REQUEST_TIMEOUT_MS": "1000"}
    probe = "from service.settings import Settings; s = Settings(); print(s.max_request_rows, s.max_sample_rows)"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["1024", "2048"], result.stderr
    env["VAE_REQUEST_TIMEOUT_MS"] = "5000"
    result = subprocess.run([sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "vae-serve: invalid settings: " in result.stderr
    assert "VAE_REQUEST_TIMEOUT_MS (5000) is above VAE_MAX_REQUEST_TIMEOUT_MS (1000)" in result.stderr
