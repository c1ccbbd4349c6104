"""Open every page of the built book in headless Chromium and check what a reader would see.

Run after `make book` (the `make test` target builds the book first): `pytest tests/browser`.
Checks, for every page in the table of contents: no error output or traceback, every image loads,
math is typeset by MathJax, internal links resolve; for lessons, the Colab launch button and the
download button point at the lesson's generated student notebook (book/_ext/student_notebooks.py), which
holds no raw MyST. Screenshots of a few pages are kept in _build/screenshots/ for a person to look at.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# The branch of the repository that holds the generated student notebooks, which the Colab buttons open.
NOTEBOOKS_BRANCH = CONFIG["sphinx"]["config"]["student_notebooks_branch"]
STUDENT_NOTEBOOKS = HTML / "_notebooks"

def _toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for v in node.values():
            out += _toc_files(v)
    elif isinstance(node, list):
        for item in node:
            out += _toc_files(item)
    return out

PAGES = [TOC["root"]] + _toc_files(TOC)
# Jupyter Book 1.0.4 emits sphinx-thebe's inline configuration script twice on every page; the second
# copy re-declares a `const`. It is harmless (thebe is not used) and outside this repository's control.
KNOWN_UPSTREAM_ERRORS = {"Identifier 'THEBE_JS_URL' has already been declared"}
SCREENSHOT_PAGES = {TOC["root"], "lessons/01_gradient_descent"}

@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail(f"the book is not built: {HTML / 'index.html'} is missing; run `make book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Chromium was not found: install it (Debian: `apt-get install chromium`) or set CHROMIUM=/path")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield b
        b.close()

def _colab_url(page_file: str, branch: str = NOTEBOOKS_BRANCH) -> str:
    repo = CONFIG["repository"]["url"].rstrip("/")
    org_repo = urlparse(repo).path.strip("/")
    return f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{page_file}.ipynb"


def _raw_myst(notebook: Path) -> dict[int, dict]:
    """Markdown cells of a notebook that hold MyST roles or directives (book/_ext/myst_to_jupyter.py)."""
    import sys

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from myst_to_jupyter import raw_myst

    nb = nbformat.read(notebook, as_version=4)
    found = {i: dict(raw_myst(c.source)) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"}
    return {i: f for i, f in found.items() if f}

@pytest.mark.parametrize("page_file", PAGES)
def test_page_renders(page_file, server, browser):
    url = urljoin(server, page_file + ".html")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    external = []
    page.route("**/*", lambda route: (external.append(route.request.url), route.abort())
               if not route.request.url.startswith(server) else route.continue_())
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)) if str(exc) not in KNOWN_UPSTREAM_ERRORS else None)
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url}: HTTP {response.status if response else 'no response'}"

    # Error outputs: myst-nb marks them with these classes; a traceback in any output is an error too.
    bad = page.locator("div.output.error, div.output.traceback").count()
    assert bad == 0, f"{page_file}: {bad} error outputs"
    outputs_text = " ".join(page.locator("div.cell_output").all_inner_texts())
    assert "Traceback (most recent call last)" not in outputs_text, f"{page_file}: a traceback in the outputs"
    # Markdown that a cell displays is rendered, not shown as source (a table's |---| row, for one).
    assert "|---|" not in page.locator("article").inner_text(), f"{page_file}: a Markdown table shown as raw text"

    # Images: every <img> has loaded (naturalWidth > 0).
    broken = page.eval_on_selector_all(
        "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert not broken, f"{page_file}: images that did not load: {broken}"

    # Math: wait for MathJax, then no raw TeX delimiters may be left in the article.
    if page.locator("div.math, span.math").count():
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
        page.evaluate("() => MathJax.startup.promise")
        typeset = page.locator("mjx-container").count()
        raw = page.locator("div.math, span.math").count()
        assert typeset >= raw, f"{page_file}: {raw} math elements but only {typeset} typeset"
        # MathJax renders TeX it cannot parse as an error box instead of failing.
        tex_errors = page.locator("mjx-merror").all_inner_texts()
        assert not tex_errors, f"{page_file}: TeX errors in the math: {tex_errors}"

    # Internal links resolve to built files (and their anchors exist).
    hrefs = page.eval_on_selector_all("article a[href]", "as => as.map(a => a.href)")
    for href in hrefs:
        target, anchor = urldefrag(href)
        if not target.startswith(server):
            continue
        path = HTML / unquote(urlparse(target).path).lstrip("/")
        if path.is_dir():
            path = path / "index.html"
        assert path.exists(), f"{page_file}: broken link {href}"
        if anchor and path.suffix == ".html":
            assert f'id="{anchor}"' in path.read_text(errors="replace"), f"{page_file}: missing anchor {href}"

    # Launch buttons: a lesson's Colab button opens its generated student notebook on the notebooks
    # branch, and its download button serves the same notebook from the site's _notebooks/ folder (the
    # tree that `make notebooks-branch` commits to that branch); it holds no raw MyST. A page without
    # an .ipynb twin in the repository has no launch button at all (Colab cannot run a .md). Links to
    # Colab inside a page's text (the exercises table) must name notebooks that exist too.
    colab_links = page.eval_on_selector_all(
        ".header-article a[href*='colab.research.google.com'], .dropdown-launch-buttons a[href*='colab']",
        "as => as.map(a => a.href)")
    if page_file.startswith("lessons/"):
        assert colab_links and colab_links[0] == _colab_url(page_file), \
            f"{page_file}: Colab button points at {colab_links}"
        assert (ROOT / f"{page_file}.ipynb").exists(), f"the lesson's source notebook {page_file}.ipynb is missing"
        generated = STUDENT_NOTEBOOKS / f"{page_file}.ipynb"
        assert generated.exists(), f"the Colab button's notebook {generated} was not generated"
        downloads = page.eval_on_selector_all("a[href$='.ipynb']", "as => as.map(a => a.href)")
        own = [d for d in downloads if d.startswith(server) and d.endswith(f"/_notebooks/{page_file}.ipynb")]
        assert own, f"{page_file}: no download button for its generated notebook (found {downloads})"
        assert (HTML / unquote(urlparse(own[0]).path).lstrip("/")) == generated
        raw = _raw_myst(generated)
        assert not raw, f"{page_file}: raw MyST in the generated notebook's Markdown cells: {raw}"
    elif not (ROOT / f"{page_file}.ipynb").exists():
        assert not colab_links, f"{page_file}: a launch button on a page without a notebook: {colab_links}"
    all_colab = page.eval_on_selector_all("a[href*='colab.research.google.com/github/']", "as => as.map(a => a.href)")
    prefix = _colab_url("", branch="").rsplit("/", 2)[0] + "/"
    for link in all_colab:
        assert link.startswith(prefix), f"{page_file}: Colab link outside the configured repository: {link}"
        branch, target = link[len(prefix):].split("/", 1)
        where = STUDENT_NOTEBOOKS if branch == NOTEBOOKS_BRANCH else ROOT
        assert (where / target).exists(), f"{page_file}: Colab link to a notebook that is not there: {link}"

    # Previous / next: every page but the first links back, every page but the last links forward.
    index = PAGES.index(page_file)
    if index > 0:
        assert page.locator("a.left-prev").count() == 1, f"{page_file}: no link to the previous page"
    if index < len(PAGES) - 1:
        assert page.locator("a.right-next").count() == 1, f"{page_file}: no link to the next page"

    assert not errors, f"{page_file}: JavaScript errors: {errors}"
    if page_file in SCREENSHOT_PAGES:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / (page_file.replace("/", "__") + ".png")), full_page=False)
    page.close()


def test_search_finds_the_lessons(server, browser):
    page = browser.new_page()
    page.goto(urljoin(server, "search.html?q=AdamW"), wait_until="load")
    page.wait_for_selector("ul.search li", timeout=20000)
    hits = page.eval_on_selector_all("ul.search li a", "as => as.map(a => a.getAttribute('href'))")
    assert any("04_adamw_weight_decay" in h for h in hits), f"searching 'AdamW' did not find lesson 04: {hits}"
    page.close()


def test_status_page_lists_every_lesson_and_the_benchmark_machine(server, browser):
    page = browser.new_page()
    page.goto(urljoin(server, "book/status.html"), wait_until="load")
    text = page.locator("article").inner_text()
    for lesson in (p for p in PAGES if p.startswith("lessons/")):
        assert lesson in text, f"the status page's execution table has no row for {lesson}"
    assert "Machine:" in text, "the status page shows no benchmark with its machine"
    page.close()
