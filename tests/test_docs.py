"""The docs site and the generated config reference stay in step with the code.

`mkdocs build --strict` fails on a broken link, a missing anchor or a nav entry without a page; the
reference pages fail when a schema changed and `python -m mmw2s.reference` was not rerun.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from mmw2s import reference
from mmw2s.cli import build_parser
from mmw2s.schema import describe, walk

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class _Inner:
    mode: Literal["a", "b"] = dataclasses.field(default="a", metadata={"help": "a mode"})
    rate: Optional[float] = dataclasses.field(default=None, metadata={"help": "a rate"})


@dataclasses.dataclass
class _Outer:
    first: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "first section", "keys_of": f"{__name__}:_Inner"})
    second: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "second section", "keys_of": f"{__name__}:_Inner", "keys_under": ("x", "y")})


def test_sections_expand_once_through_their_schema():
    rows = {r.key: r for r in walk(_Outer)}
    assert list(rows) == ["first", "first.mode", "first.rate", "second"]
    assert rows["first"].section and "`first.*`" in rows["first"].help
    assert rows["first.mode"].allowed == ("a", "b")
    assert rows["first.rate"].type == "float or null"
    assert "`second.x.*` and `second.y.*`, as listed under `first.*`" in rows["second"].help
    # `describe` (what `mmw2s STAGE --help` prints) expands the same way
    assert [key for key, *_ in describe(_Outer)] == list(rows)


def test_run_help_lists_the_keys_of_its_sections(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    for key in ("weak_captioner.lr", "bootstrap.decoding.top_p", "eval.models", "world.noise.total",
                "bootstrapped_text.source"):
        assert f"\n  {key} " in text, key
    assert "mapping of str to Any" not in text


def test_committed_reference_is_current():
    stale = reference.stale(reference.DOCS_DIR)
    assert not stale, f"rerun `python -m mmw2s.reference` and commit docs/reference/: {stale}"


def test_reference_check_fails_on_an_edited_page(tmp_path):
    assert reference.main(["--out", str(tmp_path)]) == 0
    assert reference.main(["--check", "--out", str(tmp_path)]) == 0
    page = tmp_path / "train.md"
    page.write_text(page.read_text().replace("| `lr` |", "| `learning_rate` |"))
    assert reference.main(["--check", "--out", str(tmp_path)]) == 1


def test_docs_site_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed in CI: install the docs extra")
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "run" / "index.html").is_file()


def test_readme_stays_a_front_door():
    """Usage and links; write-ups and measurements belong in docs/ (their pages are in the nav)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines: move the detail to a docs page"
    for page in ("docs/quickstart.md", "docs/own-shards.md", "docs/output-schema.md", "docs/reference/index.md"):
        assert f"]({page})" in "\n".join(lines), page
