"""Rewrite the README's configuration table from ``billing/config.py`` (run after adding a setting).

.venv/bin/python scripts/settings_table.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billing.config import SETTINGS  # noqa: E402

START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def table() -> str:
    """The markdown table of every setting."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "*(empty)*"
        rows.append(f"| `{setting.name}` | {default} | {setting.meaning} |")
    return "\n".join(rows)


def main() -> None:
    """Replace the table between the markers in README.md."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"README.md has no {START} ... {END} block")
    readme.write_text(pattern.sub(f"{START}\n{table()}\n{END}", text))


if __name__ == "__main__":
    main()
