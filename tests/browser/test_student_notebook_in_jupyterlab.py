"""A generated student notebook opened in a real JupyterLab, as a student opens it.

Run after `make book` (which writes _build/html/_notebooks/): `pytest tests/browser`. The test starts
JupyterLab once (headless, on a free local port, in a temporary folder), with jupyterlab-myst switched
off, so that the notebook renders with JupyterLab's own Markdown and MathJax, as Colab and a plain
JupyterLab show it. It opens one lesson and checks the rendered Markdown: no raw MyST, math typeset
without TeX errors, admonitions as block quotes, the answers as a closed <details> box, and numbers
quoted in the book's prose present in the notebook's prose. Screenshots go to _build/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# One lesson with every kind of construct: glued numbers, citations, links to other lessons, admonitions,
# a dropdown, inline and display math with \begin{aligned}.
LESSON = "lessons/02_sgd_momentum"
RAW_MYST = ["{glue", "{cite", "{numref", "{doc}", "{ref}", "{eq}", "```{", ":::{", "{fa}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    notebook = HTML / "_notebooks" / f"{LESSON}.ipynb"
    if not notebook.exists():
        pytest.fail(f"{notebook} is missing: run `make book` first (book/_ext/student_notebooks.py writes it)")
    root = tmp_path_factory.mktemp("jupyterlab")
    shutil.copy(notebook, root / "lesson.ipynb")
    config = root / ".config"
    (config / "labconfig").mkdir(parents=True)
    # Plain JupyterLab, as in Colab: no MyST renderer; no news pop-up over the screenshots.
    (config / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": {
        "jupyterlab-myst": True, "@jupyterlab/apputils-extension:announcements": True}}))
    settings = root / ".settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Attach every cell to the page (the default skips off-screen ones), so that all of them render.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), secrets.token_hex(16)
    log = (root / "jupyterlab.log").open("w")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={root / '.settings'}", f"--LabApp.workspaces_dir={root / '.workspaces'}",
         "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{(root / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, token, nbformat.read(notebook, as_version=4)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def rendered(lab):
    """The lesson open in JupyterLab, every Markdown cell rendered and its math typeset."""
    if CHROMIUM is None:
        pytest.fail("Chromium was not found: install it (Debian: `apt-get install chromium`) or set CHROMIUM=/path")
    from playwright.sync_api import sync_playwright

    url, token, nb = lab
    markdown_cells = sum(1 for c in nb.cells if c.cell_type == "markdown")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/lab/tree/lesson.ipynb?reset&token={token}", wait_until="load", timeout=120000)
        page.wait_for_function(
            f"document.querySelectorAll('.jp-MarkdownCell .jp-RenderedMarkdown').length >= {markdown_cells}",
            timeout=120000)
        # MathJax typesets after the Markdown renders: wait until the count of typeset formulas settles.
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            count = page.locator(".jp-MarkdownCell mjx-container").count()
            if count != last:
                last, stable_since = count, time.monotonic()
            elif count and time.monotonic() - stable_since > 3:
                break
            time.sleep(0.5)
        yield page, nb, errors
        browser.close()


def _prose(page) -> list[str]:
    """The rendered text of each Markdown cell, code spans and blocks left out."""
    return page.eval_on_selector_all(".jp-MarkdownCell .jp-RenderedMarkdown", """els => els.map(e => {
        const c = e.cloneNode(true);
        c.querySelectorAll('code, pre, mjx-container, mjx-assistive-mml').forEach(x => x.remove());
        return c.textContent;
    })""")


def test_no_raw_myst_in_the_rendered_markdown(rendered):
    page, _, _ = rendered
    disabled = page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).disabledExtensions")
    assert "jupyterlab-myst" in disabled, f"jupyterlab-myst should be off here (plain JupyterLab, as Colab): {disabled}"
    for index, text in enumerate(_prose(page)):
        for raw in RAW_MYST:
            assert raw not in text, f"Markdown cell {index} shows raw MyST {raw!r}: ...{text[max(0, text.find(raw) - 80):][:200]}..."


def test_math_is_typeset_without_tex_errors(rendered):
    page, nb, _ = rendered
    typeset = page.locator(".jp-MarkdownCell mjx-container").count()
    expected = sum(len(re.findall(r"(?<!\\)\$\$?", c.source)) for c in nb.cells if c.cell_type == "markdown") // 2
    assert typeset > 0 and typeset >= 0.9 * expected, f"{typeset} formulas typeset of about {expected}"
    errors = page.locator(".jp-MarkdownCell mjx-merror").all_inner_texts()
    assert not errors, f"TeX errors: {errors}"
    leftovers = [t for t in _prose(page) if re.search(r"\\(begin|frac|lVert|theta|eta)\b|\$\$", t)]
    assert not leftovers, f"TeX shown as text: {leftovers[0][:300]}"
    # the aligned environment of the lesson is one of the typeset formulas
    assert any("begin{aligned}" in c.source for c in nb.cells if c.cell_type == "markdown")
    assert page.locator(".jp-MarkdownCell mjx-container[display='true'] mjx-mtable").count() >= 1


def test_admonitions_and_dropdowns_render(rendered):
    page, _, _ = rendered
    titles = page.eval_on_selector_all(".jp-RenderedMarkdown blockquote > p:first-child > strong",
                                       "els => els.map(e => e.textContent)")
    assert "Run this lesson" in titles, titles
    summaries = page.eval_on_selector_all(".jp-RenderedMarkdown details > summary", "els => els.map(e => e.textContent)")
    assert "Answers" in summaries, summaries
    assert page.eval_on_selector(".jp-RenderedMarkdown details", "d => !d.open"), "the answers should start closed"


def test_numbers_quoted_in_the_book_are_in_the_notebooks_prose(rendered):
    from bs4 import BeautifulSoup

    page, _, _ = rendered
    soup = BeautifulSoup((HTML / f"{LESSON}.html").read_text(encoding="utf8"), "html.parser")
    quoted = []
    for span in soup.select("article span.pasted-text")[:12]:
        following = span.next_sibling
        after = " ".join(str(following).split()[:3]) if isinstance(following, str) else ""
        quoted.append((span.get_text(), after))
    assert quoted, "the book's page quotes no glued numbers"
    notebook_text = " ".join(" ".join(_prose(page)).split())
    for value, after in quoted:
        assert f"{value}{after[:1]}" in notebook_text or f"{value} {after}".strip() in notebook_text, \
            f"the book says '{value} {after}', the notebook does not"
    assert " ".join(f"{v} {a}".strip() for v, a in quoted[:1]) in notebook_text


def test_screenshots_for_a_person_to_look_at(rendered):
    page, _, errors = rendered
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = "jupyterlab__" + LESSON.replace("/", "__")
    page.locator(".jp-MarkdownCell").first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{name}__top.png"))
    aligned = page.locator(".jp-MarkdownCell", has=page.locator("mjx-container[display='true'] mjx-mtable")).first
    aligned.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{name}__math.png"))
    answers = page.locator(".jp-RenderedMarkdown details").last
    answers.locator("summary").click()
    answers.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{name}__answers.png"))
    assert not [e for e in errors if "lesson" in e.lower()], errors
