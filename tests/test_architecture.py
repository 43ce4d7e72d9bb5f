"""docs/architecture.md stays true: every path its code map names exists, and every package of curate/ is on it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _code_map() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text.split("## Code map", 1)[1].split("\n## ", 1)[0]


def test_every_path_on_the_code_map_exists() -> None:
    missing = []
    for cell in re.findall(r"^\| (.+?) \|", _code_map(), re.M):
        for path in re.findall(r"`(curate/[^`]+)`", cell):
            if not (ROOT / path).exists():
                missing.append(path)
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_package_is_on_the_code_map() -> None:
    named = set(re.findall(r"`(curate/[^`]+?)/?`", _code_map()))
    # a cell may name sibling packages after the first one: `curate/stages/split/`, `balance/`
    for row in re.findall(r"^\| (.+?) \|", _code_map(), re.M):
        first = re.search(r"`(curate/(?:[^/`]+/)*)[^/`]+/?`", row)
        if first:
            named |= {first.group(1) + m for m in re.findall(r"`([a-z_]+)/`", row)}
    packages = {
        str(p.parent.relative_to(ROOT))
        for p in (ROOT / "curate").rglob("__init__.py")
        if "__pycache__" not in p.parts and p.parent != ROOT / "curate" and p.parent != ROOT / "curate" / "stages"
    }
    missing = sorted(pkg for pkg in packages if pkg not in {n.rstrip("/") for n in named})
    assert not missing, f"packages missing from the code map of docs/architecture.md: {missing}"
