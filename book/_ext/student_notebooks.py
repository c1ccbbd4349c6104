"""Student notebooks: each lesson (and exercise) as a notebook that reads as plain Jupyter Markdown.

The ``.md``/``.ipynb`` pair of a lesson stays the source of truth. At the end of every HTML build this
extension converts each page that has an ``.ipynb`` twin (the lessons), and each exercise named in
``student_notebooks_extra``, with :mod:`myst_to_jupyter`: glued numbers written in from this build
(myst-nb's ``<docname>.glue.json``), citations as the book shows them ("(Author, Year)") with the full
entries at the end, cross-references as links to the page in the published book, admonitions as block
quotes, dropdowns as ``<details>``, math with the book's macros and equation numbers; code unchanged,
outputs stripped. A conversion that fails is a build warning (an error under ``-W``).

Where they go, and the buttons that serve them:

* ``_build/html/_notebooks/<docname>.ipynb``: a folder of the published site. The download button's
  ``.ipynb`` of each lesson page links there.
* The branch ``student_notebooks_branch`` (``_config.yml``, default ``notebooks``) of the repository in
  ``repository.url`` holds the same tree (``make notebooks-branch`` commits the folder to it; push it
  with the site). The Colab button opens ``<repository>/blob/<that branch>/<docname>.ipynb``.

Links in the text point at the published book: ``html.baseurl`` in ``_config.yml`` when set, else the
GitHub Pages address of ``repository.url``.
"""

from __future__ import annotations

import json
import shutil
import time
from glob import glob
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging

import myst_to_jupyter as convert

logger = logging.getLogger(__name__)

FOLDER = "_notebooks"
COLAB = "https://colab.research.google.com"


# --------------------------------------------------------------------------------------------------
# Where things are
# --------------------------------------------------------------------------------------------------

def repository(app) -> tuple[str, str, str]:
    """(repository URL, its branch, the book's folder in it) from _config.yml's ``repository``."""
    options = app.config.html_theme_options or {}
    url = (options.get("repository_url") or "").rstrip("/")
    return url, options.get("repository_branch") or "main", (options.get("path_to_docs") or "").strip("/")


def book_url(app) -> str:
    """The published book's root URL: ``html_baseurl``, else GitHub Pages of the repository."""
    if app.config.html_baseurl:
        return app.config.html_baseurl.rstrip("/") + "/"
    url, _, _ = repository(app)
    parts = urlparse(url).path.strip("/").split("/")
    if "github.com" not in url or len(parts) < 2:
        return ""
    org, repo = parts[:2]
    return f"https://{org}.github.io/" + ("" if repo.lower() == f"{org.lower()}.github.io" else f"{repo}/")


def colab_url(app, path: str) -> str:
    """The Colab address of the generated notebook ``path`` (``lessons/05_large_batch.ipynb``)."""
    url, _, _ = repository(app)
    org_repo = "/".join(urlparse(url).path.strip("/").split("/")[:2])
    return f"{COLAB}/github/{org_repo}/blob/{app.config.student_notebooks_branch}/{path}"


def notebook_pages(app) -> list[str]:
    """Docnames whose source has an ``.ipynb`` twin: the pages with launch buttons (the lessons)."""
    pages = []
    for docname in sorted(app.env.found_docs):
        source = Path(app.env.doc2path(docname))
        if source.suffix == ".md" and source.with_suffix(".ipynb").exists():
            pages.append(docname)
    return pages


def extra_sources(app) -> list[Path]:
    srcdir = Path(app.srcdir)
    found = set()
    for pattern in app.config.student_notebooks_extra:
        found.update(Path(p) for p in glob(str(srcdir / pattern)))
    return sorted(p for p in found if p.suffix == ".md" and p.with_suffix(".ipynb").exists())


# --------------------------------------------------------------------------------------------------
# What the build knows, for the converter
# --------------------------------------------------------------------------------------------------

class SphinxResolver(convert.Resolver):
    def __init__(self, app, docname: str, source: Path, glue: dict):
        self.app, self.env, self.docname, self.source = app, app.env, docname, source
        self._glue = glue
        self.base = book_url(app)
        macros = ((app.config.mathjax3_config or {}).get("tex") or {}).get("macros") or {}
        self.math_macros = dict(macros)
        self.extensions = tuple(self.env.myst_config.enable_extensions)

    # URLs in the published book
    def page_url(self, docname: str) -> str:
        return urljoin(self.base, self.app.builder.get_target_uri(docname))

    def _absolute(self, node: nodes.Element) -> str:
        here = self.page_url(self.docname)
        if node.get("refuri"):
            return urljoin(here, node["refuri"])
        return here.split("#")[0] + "#" + node.get("refid", "")

    def glue(self, key: str) -> dict:
        data = self._glue
        if "::" in key:
            path, key = key.split("::", 1)
            from sphinx.util import docname_join

            other = docname_join(self.docname, str(Path(path).with_suffix("")))
            data = load_glue(self.app, other)
        if key not in data:
            raise convert.ConversionError(f"no glued value {key!r} in this build's output for {self.docname}")
        return data[key].get("data", {})

    def cite(self, role: str, target: str) -> tuple[str, list[str]]:
        """The citation as the book formats it (sphinxcontrib-bibtex's style and entries), in round
        brackets where the book's style is author-year: "(Goyal et al., 2017)", "Goyal et al. (2017)"."""
        from sphinxcontrib.bibtex.citation_target import parse_citation_targets
        from sphinxcontrib.bibtex.style.referencing import format_references
        from sphinxcontrib.bibtex.style.template import SphinxReferenceInfo

        domain = self.env.get_domain("cite")
        targets = list(parse_citation_targets(target))
        citations = {c.key: c for c in domain.citations
                     if domain.bibliographies[c.bibliography_key].list_ == "citation"}
        missing = [t.key for t in targets if t.key not in citations]
        if missing:
            raise convert.ConversionError(f"no bibliography entry for {missing}")
        references = [
            (citations[t.key].entry, citations[t.key].formatted_entry,
             SphinxReferenceInfo(builder=self.app.builder, fromdocname="book/references",
                                 todocname=citations[t.key].bibliography_key.docname,
                                 citation_id=citations[t.key].citation_id, title=None,
                                 pre_text=t.pre, post_text=t.post))
            for t in targets
        ]
        rendered = format_references(_reference_style(domain), role, references).render(domain.backend)
        return "".join(node.astext() for node in rendered), [t.key for t in targets]

    def xref(self, role: str, target: str, title: str | None) -> convert.Link:
        if role == "eq":
            domain, typ = self.env.get_domain("math"), "eq"
        elif role.startswith("py:"):
            domain, typ = self.env.get_domain("py"), role[3:]
        else:
            domain, typ = self.env.get_domain("std"), role
        if typ in ("ref", "numref", "term", "keyword"):
            target = target.lower() if typ != "term" else target
        inner = nodes.inline(title or target, title or target)
        pending = addnodes.pending_xref("", inner, refdoc=self.docname, refdomain=domain.name, reftype=typ,
                                        reftarget=target, refexplicit=title is not None, refwarn=True)
        node = domain.resolve_xref(self.env, self.docname, self.app.builder, typ, target, pending, inner.deepcopy())
        if node is None:
            raise convert.ConversionError(f"{{{role}}}`{target}` does not resolve in the book")
        return convert.Link(node.astext(), self._absolute(node))

    def equation_number(self, label: str) -> str | None:
        try:
            return self.xref("eq", label, None).text.strip("()")
        except convert.ConversionError:
            return None

    def link(self, target: str) -> str | None:
        from sphinx.util import docname_join

        path, _, fragment = target.partition("#")
        if not path:   # '#label': a label of the book, else an anchor of this notebook (kept)
            std = self.env.get_domain("std")
            hit = std.labels.get(fragment.lower()) or std.anonlabels.get(fragment.lower())
            return f"{self.page_url(hit[0])}#{hit[1]}" if hit else None
        if Path(path).suffix in (".md", ".ipynb", ".rst", ""):
            stem = str(Path(path).with_suffix(""))
            docname = stem.strip("/") if path.startswith("/") else docname_join(self.docname, stem)
            if docname in self.env.all_docs:
                return self.page_url(docname) + (f"#{fragment}" if fragment else "")
        # another file of the repository: its page on the repository host
        srcdir = Path(self.app.srcdir)
        file = (srcdir / path.lstrip("/") if path.startswith("/") else self.source.parent / path).resolve()
        repo_url, branch, book_dir = repository(self.app)
        if repo_url and file.exists() and file.is_relative_to(srcdir.resolve()):
            in_repo = Path(book_dir) / file.relative_to(srcdir.resolve())
            return f"{repo_url}/blob/{branch}/{in_repo.as_posix()}"
        return None

    def bibliography(self, keys: list[str]) -> list[tuple[str, str]]:
        """Each key's entry as the book's bibliography formats it, in Markdown, by author and year."""
        domain = self.env.get_domain("cite")
        entries = []
        for key in keys:
            citation = next(c for c in domain.citations if c.key == key)
            label, _ = self.cite("p", key)
            label = label[1:-1] if label.startswith("(") and label.endswith(")") else label
            text = citation.formatted_entry.text.render(_MarkdownBackend())
            entries.append((label, " ".join(text.split())))
        return sorted(entries, key=lambda e: e[0].lower())

    def read_file(self, path: str) -> bytes:
        file = Path(self.app.srcdir) / path.lstrip("/") if path.startswith("/") else self.source.parent / path
        if not file.exists():
            raise convert.ConversionError(f"{path} does not exist")
        return file.read_bytes()

    def literalinclude(self, path: str, options: dict[str, str]) -> str:
        from sphinx.directives.code import LiteralIncludeReader

        file = Path(self.app.srcdir) / path.lstrip("/") if path.startswith("/") else self.source.parent / path
        opts: dict = {k: v for k, v in options.items() if k not in ("language", "caption", "name", "class",
                                                                    "linenos", "emphasize-lines")}
        for k in ("dedent", "tab-width", "lineno-start"):
            if k in opts:
                opts[k] = int(opts[k])
        text, _ = LiteralIncludeReader(str(file), opts, self.app.config).read()
        return text

    def substitution(self, name: str) -> str:
        subs = getattr(self.env.myst_config, "substitutions", {}) or {}
        if name not in subs:
            raise convert.ConversionError(f"no substitution {name!r}")
        return str(subs[name])


def _reference_style(domain):
    """The book's citation style; an author-year style with round brackets, as prose in a notebook reads."""
    import dataclasses

    from sphinxcontrib.bibtex.style.referencing import BracketStyle
    from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

    style = domain.reference_style
    if not isinstance(style, AuthorYearReferenceStyle):
        return style
    fields = {f.name: getattr(style, f.name) for f in dataclasses.fields(style) if f.init and f.name != "styles"}
    fields.update(bracket_parenthetical=BracketStyle(left="(", right=")", sep="; "),
                  bracket_textual=BracketStyle(left="(", right=")"), bracket_year=BracketStyle(left="(", right=")"))
    return type(style)(**fields)


def _markdown_backend():
    import pybtex.plugin

    return pybtex.plugin.find_plugin("pybtex.backends", "markdown")


class _MarkdownBackend(_markdown_backend()):
    """pybtex's Markdown, escaping only what Markdown would read as markup, and leaving $math$ alone."""

    def format_str(self, text):
        import re

        parts = re.split(r"(\$[^$]+\$)", text)
        return "".join(part if len(part) > 1 and part[0] == part[-1] == "$"
                       else re.sub(r"([\\`*_\[\]<>|])", r"\\\1", part) for part in parts)


def load_glue(app, docname: str) -> dict:
    """The values the page's notebook glued in this build (written by myst-nb beside its output)."""
    path = Path(app.outdir).parent / "jupyter_execute" / f"{docname}.glue.json"
    return json.loads(path.read_text(encoding="utf8")) if path.exists() else {}


def read_source(source: Path):
    """The MyST notebook (jupytext), with the cell ids of its committed .ipynb twin where they line up."""
    import jupytext

    nb = jupytext.read(source)
    twin = source.with_suffix(".ipynb")
    if twin.exists():
        paired = nbformat.read(twin, as_version=4)
        if [c.source for c in paired.cells] == [c.source for c in nb.cells]:
            for cell, other in zip(nb.cells, paired.cells):
                if other.get("id"):
                    cell["id"] = other["id"]
    return nb


def note_for(app, docname: str, executed: bool, cites: bool = True, links: bool = True) -> str:
    """The block quote under the notebook's title: where it comes from and what its numbers are."""
    book = book_url(app)
    title = app.config.html_title or app.config.project
    page = urljoin(book, app.builder.get_target_uri(docname)) if book and docname in app.env.all_docs else ""
    text = f"**A {'lesson' if executed else 'notebook'} of the course “{title}”, made for JupyterLab and Colab.**"
    where = (f"[the book]({book})" + (f" ([this lesson's page]({page}))" if page else "")) if book else "the book"
    if executed:
        text += (f" The numbers quoted in the text come from the build of {where}; running the cells computes "
                 "your own, which may differ slightly in the last digits (other processors and library versions "
                 "round differently).")
    extras = (["links lead to the book"] if links else []) + (["the works cited are listed at the end"] if cites else [])
    if extras:
        joined = "; ".join(extras)
        text += " " + joined[0].upper() + joined[1:] + "."
    return "> " + text


# --------------------------------------------------------------------------------------------------
# Build events
# --------------------------------------------------------------------------------------------------

def point_buttons_at_notebooks(app, pagename, templatename, context, doctree):
    """The download button's .ipynb and the Colab button of a lesson page: its generated notebook."""
    if pagename not in notebook_pages(app):
        return
    path = f"{pagename}.ipynb"
    for group in context.get("header_buttons") or []:
        for button in group.get("buttons") or []:
            if button.get("label") == "download-notebook-button":
                button["url"] = context["pathto"](f"{FOLDER}/{path}", 1)
            elif group.get("label") == "launch-buttons" and button.get("text") == "Colab":
                button["url"] = colab_url(app, path)


def write_notebooks(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir) / FOLDER
    shutil.rmtree(out, ignore_errors=True)   # made afresh: no notebook of an older build stays behind
    todo = [(docname, Path(app.env.doc2path(docname)), True) for docname in notebook_pages(app)]
    todo += [(str(p.relative_to(app.srcdir).with_suffix("")), p, False) for p in extra_sources(app)]
    written, start = 0, time.perf_counter()
    for docname, source, executed in todo:
        nb = read_source(source)
        resolver = SphinxResolver(app, docname, source, load_glue(app, docname) if executed else {})
        try:
            student = convert.convert_notebook(
                nb, resolver, note=lambda state: note_for(app, docname, executed, cites=bool(state.cited),
                                           links=any(r in convert.XREF_ROLES for r in state.roles)),
                references_intro="The works cited above, as the book's [references page]"
                                 f"({urljoin(book_url(app), app.builder.get_target_uri('book/references'))}) "
                                 "lists them." if "book/references" in app.env.all_docs else "")
        except convert.ConversionError as exc:
            logger.warning(f"student notebook of {source.relative_to(app.srcdir)}: {exc}",
                           type="student_notebooks", subtype="convert")
            continue
        student.metadata["course"] = {"source": str(source.relative_to(app.srcdir)),
                                      "generated_by": "book/_ext/student_notebooks.py"}
        try:
            nbformat.validate(student)
        except nbformat.ValidationError as exc:
            logger.warning(f"student notebook of {source.relative_to(app.srcdir)} is not a valid notebook: {exc}",
                           type="student_notebooks", subtype="convert")
            continue
        target = out / f"{docname}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(nbformat.writes(student) + "\n", encoding="utf8")
        written += 1
    url, _, _ = repository(app)
    (out / "README.md").write_text(
        "# Notebooks for JupyterLab and Colab\n\n"
        f"Generated from the course's MyST sources by `make book` (book/_ext/student_notebooks.py); do not edit "
        f"them here. The sources are in {url or 'the repository'} (branch `{repository(app)[1]}`).\n",
        encoding="utf8")
    logger.info(f"[student_notebooks] {written} notebooks in {out} ({time.perf_counter() - start:.1f} s)")


def setup(app):
    app.add_config_value("student_notebooks_branch", "notebooks", "html")
    app.add_config_value("student_notebooks_extra", [], "html")
    # after the theme's buttons (priority 501) and launch_targets (600)
    app.connect("html-page-context", point_buttons_at_notebooks, priority=650)
    app.connect("build-finished", write_notebooks)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
