"""Regenerate the docs' tables from the code and the shipped manifests.

python scripts/doc_tables.py          # rewrite docs/training.md (models) and docs/configuration.md (settings)
python scripts/doc_tables.py --check  # exit 1 if either is out of date (the tests call this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def models_table() -> str:
    rows = [
        "| model | likelihood | architecture | latent | test ELBO | test log p(x) (IWAE) | bits/dim | gap | KL "
        "| active units |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted((ROOT / "models").glob("*/manifest.json")):
        m = json.loads(path.read_text())
        x = m["metrics"]
        sigma = f" (σ = {m['sigma']:.3f}, learned)" if m.get("sigma") else ""
        rows.append(
            f"| `{m['name']}` | {m['likelihood']}{sigma} "
            f"| {m['architecture']} | {m['latent_dim']} | {x['test_elbo']:.2f} "
            f"| {x['test_log_likelihood']:.2f} (K = {x['iwae_samples']}) | {x['test_bits_per_dim']:.3f} "
            f"| {x['test_gap']:.2f} | {x['test_kl']:.2f} "
            f"| {x['active_units']} / {m['latent_dim']} |"
        )
    return "\n".join(rows)


def settings_table() -> str:
    from service.settings import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else str(field.default)
        rows.append(f"| `VAE_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)


TABLES = {"models": ROOT / "docs" / "training.md", "settings": ROOT / "docs" / "configuration.md"}


def render(marker: str, text: str) -> str:
    table = {"models": models_table, "settings": settings_table}[marker]()
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- {marker}:start/end --> markers")
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for marker, path in TABLES.items():
        current = path.read_text()
        wanted = render(marker, current)
        if wanted != current:
            stale.append(path)
            if not args.check:
                path.write_text(wanted)
    if args.check and stale:
        print(
            f"out of date: {', '.join(str(p.relative_to(ROOT)) for p in stale)}; run python scripts/doc_tables.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
