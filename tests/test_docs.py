"""The README documents what the code offers."""

from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [f"VAE_{name.upper()}" for name in Settings.model_fields if f"`VAE_{name.upper()}`" not in README]
    assert not missing, missing


def test_readme_starts_with_the_serve_and_test_commands_that_ci_runs():
    head = README.split("## ")[0]
    assert "bash scripts/serve.sh" in head and "bash scripts/test.sh" in head
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_readme_tables_match_the_code_and_the_shipped_manifests():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "scripts/readme_tables.py", "--check"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
