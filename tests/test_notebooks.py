"""The notebooks as files: paired twins in sync, no committed outputs, every lesson in the book,
and the Colab install cell pointing at the repository named in _config.yml."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def _paired_sources() -> list[Path]:
    out = []
    for folder in ["lessons", "exercises"]:
        for md in sorted((ROOT / folder).rglob("*.md")):
            if "src" in md.relative_to(ROOT).parts:  # exercise sources: single files, not pairs
                continue
            if md.read_text().lstrip().startswith("---\njupytext:"):
                out.append(md)
    return out


def _notebooks() -> list[Path]:
    return sorted(p for folder in ["lessons", "exercises"] for p in (ROOT / folder).rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for value in node.values():
            files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


SOURCES = _paired_sources()
NOTEBOOKS = _notebooks()


def test_there_are_lessons():
    assert any(p.parent.name == "lessons" for p in SOURCES)


@pytest.mark.parametrize("md", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pair_exists_and_is_in_sync(md: Path):
    twin = md.with_suffix(".ipynb")
    assert twin.exists(), f"{md.relative_to(ROOT)} has no paired .ipynb: run `make sync`"
    from_md = jupytext.read(md)
    from_ipynb = jupytext.read(twin)
    assert _cells(from_md) == _cells(from_ipynb), f"{md.name} and its .ipynb differ: run `make sync`"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebook_has_no_outputs(nb_path: Path):
    nb = nbformat.read(nb_path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{nb_path.name}: cells {dirty} carry outputs; run `make sync`"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_first_code_cell_installs_from_the_configured_repository(nb_path: Path):
    nb = nbformat.read(nb_path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert '"google.colab" in sys.modules' in first.source, f"{nb_path.name}: first code cell is not the Colab install cell"
    urls = re.findall(r"git\+(\S+?)['\"]", first.source)
    assert urls == [CONFIG["repository"]["url"]], f"{nb_path.name}: install URL {urls} != _config.yml repository.url"


def test_every_lesson_is_in_the_table_of_contents_and_every_entry_exists():
    entries = _toc_files(TOC) + [TOC["root"]]
    for entry in entries:
        matches = list(ROOT.glob(entry + ".*"))
        assert any(p.suffix in {".md", ".ipynb"} for p in matches), f"_toc.yml names {entry}, which does not exist"
    for md in SOURCES:
        if md.parent.name == "lessons":
            assert str(md.relative_to(ROOT).with_suffix("")) in entries, f"{md.name} is not in _toc.yml"


def test_environment_yml_installs_the_pinned_versions():
    """environment.yml (conda) and make (pip) install the same versions: conda brings Python and pip,
    pip brings the rest under requirements/constraints.txt."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = next(d for d in conda if d.startswith("python"))
    assert python.split("=")[-1] in {"3.11", "3.12"}
    assert pip == ["-c requirements/constraints.txt", "-e .[dev]"]
    pinned = {line.split("==")[0].lower() for line in (ROOT / "requirements/constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    # nothing that pip pins may come from conda too, where its version would go unchecked
    names = {re.split(r"[=<>]", d)[0].lower() for d in conda}
    assert not names & pinned, names & pinned
    assert "torch" in pinned


@pytest.mark.parametrize("md", [p for p in SOURCES if p.parent.name == "lessons"], ids=lambda p: p.name)
def test_each_lesson_says_how_to_run_it(md: Path):
    """The box at the top of every lesson: book, Colab, JupyterLab, and papermill with the lesson's own path."""
    box = re.search(r":::\{admonition\} Run this lesson\n(.*?)\n:::", md.read_text(), flags=re.S)
    assert box, f"{md.name}: no 'Run this lesson' box"
    text = " ".join(box.group(1).split())
    for words in ["Colab", "JupyterLab", "papermill"]:
        assert words in text, f"{md.name}: the run box does not mention {words}"
    assert f"lessons/{md.stem}.ipynb" in text, f"{md.name}: the papermill line should name lessons/{md.stem}.ipynb"
