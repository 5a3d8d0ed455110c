"""The README and docs/ describe the project as it is: short, linked, generated where they can be."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in (ROOT / "docs").glob("*.md")}


def test_every_setting_is_documented_in_the_configuration_page():
    missing = [
        f"VAE_{name.upper()}"
        for name in Settings.model_fields
        if f"`VAE_{name.upper()}`" not in DOCS["configuration.md"]
    ]
    assert not missing, missing


def test_readme_starts_with_the_serve_and_test_commands_that_ci_runs():
    head = README.split("## ")[0]
    assert "bash scripts/serve.sh" in head and "bash scripts/test.sh" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci


def test_readme_is_what_a_newcomer_reads_in_minutes():
    assert len(README.splitlines()) <= 150


@pytest.mark.parametrize("name, text", [("README.md", README)] + [(f"docs/{n}", t) for n, t in sorted(DOCS.items())])
def test_relative_links_resolve(name, text):
    base = (ROOT / name).parent
    targets = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if not (base / t).exists()]
    assert not missing, missing


@pytest.mark.parametrize("name", ["README.md", *sorted(DOCS), "../benchmarks/RESULTS.md"])
def test_docs_speak_of_the_project_as_it_is(name):
    text = (ROOT / "docs" / name).read_text() if not name.endswith("README.md") else README
    assert not re.search(r"\bissues? ?#?\d+\b|\bbefore this\b|\bused to\b", text, re.I)
    assert not re.search(r"https?://\S*(debian\.org|pypi|pythonhosted|npmjs|download\.pytorch)", text)


def test_generated_tables_match_the_code_and_the_shipped_manifests():
    result = subprocess.run(
        [sys.executable, "scripts/doc_tables.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
