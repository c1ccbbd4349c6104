"""MyST Markdown notebooks to notebooks that read as plain Jupyter Markdown (JupyterLab, Colab).

A lesson's Markdown cells use MyST: ``{glue:text}`` roles where the book shows computed numbers,
``{cite:p}`` citations, ``{doc}``/``{ref}``/``{numref}`` cross-references, ``:::{admonition}`` blocks,
labelled equations. JupyterLab (without jupyterlab-myst) and Colab show all of that as literal text.
This module rewrites the Markdown of a notebook so that it reads there as it reads in the book:

* roles and directives become what the book shows: the glued value, "(Author, Year)", a link to the
  page of the published book, a block quote with a bold title, a ``<details>`` box for a dropdown;
* everything else is left exactly as written (paragraphs, lists, tables, ``$...$`` and ``$$...$$``
  math; only labels become ``\\tag{n}`` and the book's MathJax macros are written out);
* code cells keep their source; outputs are stripped; a cell the book hides that checks the text's
  claims (``course_lib.claims.claim``) or records glued numbers gets a one-line comment saying so.

What the build knows (glue values, bibliography, labels, equation numbers) comes in through a
:class:`Resolver`; ``book/_ext/student_notebooks.py`` implements one on top of Sphinx. The parser is
myst-parser's own markdown-it configuration, so what counts as a role or a directive here is exactly
what the book's parser sees; after the rewrite every Markdown cell is parsed again and must hold no
MyST construct (:func:`raw_myst`), else :class:`ConversionError`.

``python book/_ext/myst_to_jupyter.py count NOTEBOOK...`` counts the Markdown cells that carry raw
MyST (and the constructs by kind), before or after the conversion.
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import mimetypes
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import nbformat

__all__ = [
    "ConversionError", "Link", "Resolver", "State", "convert_markdown", "convert_notebook",
    "raw_myst", "count_raw_myst", "claim_comment",
]

#: MyST extensions the book enables (``parse.myst_enable_extensions`` in _config.yml).
DEFAULT_EXTENSIONS = ("amsmath", "dollarmath", "colon_fence", "deflist", "linkify", "substitution")

# Directive titles as Sphinx/docutils show them.
ADMONITION_TITLES = {
    "note": "Note", "tip": "Tip", "hint": "Hint", "important": "Important", "warning": "Warning",
    "caution": "Caution", "attention": "Attention", "danger": "Danger", "error": "Error",
    "seealso": "See also", "todo": "To do",
}
# Roles that only style their text.
CODE_ROLES = {"code", "literal", "file", "samp", "command", "program", "envvar", "option", "makevar",
              "mimetype", "regexp", "guilabel", "menuselection", "kbd"}
# Roles resolved by the build into a link (Sphinx cross-references).
XREF_ROLES = {"doc", "ref", "numref", "eq", "term", "any", "keyword", "std:doc", "std:ref", "std:numref",
              "std:term", "math:numref"}
# Math environments that cannot stand inside $$...$$, and what they become there.
MATH_ENVIRONMENTS = {"align": "aligned", "align*": "aligned", "alignat": "alignedat", "alignat*": "alignedat",
                     "flalign": "aligned", "flalign*": "aligned", "gather": "gathered", "gather*": "gathered",
                     "equation": None, "equation*": None, "multline": "gathered", "multline*": "gathered"}
ESCAPE = re.compile(r"([\\`*_\[\]<>$|])")
ROLE_START = re.compile(r"\{([a-zA-Z0-9_\-+:]{1,36})\}(`+)")
SUBSTITUTION = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*\}\}")
EXPLICIT_TITLE = re.compile(r"^(.+?)\s*(?<!\x00)<((?:\\<|[^<])*?)>$", re.DOTALL)


class ConversionError(ValueError):
    """A MyST construct that the converter cannot turn into plain Jupyter Markdown."""


@dataclass
class Link:
    """A resolved cross-reference: the text the book shows and the URL of its target."""

    text: str
    url: str


class Resolver:
    """What the build knows. Each method raises :class:`ConversionError` for what it cannot resolve.

    ``book/_ext/student_notebooks.py`` implements these on the Sphinx environment; the unit tests
    implement them on dictionaries.
    """

    #: ``mathjax3_config.tex.macros`` of the book: written out inside the notebook's math.
    math_macros: dict[str, str] = {}
    #: MyST extensions to parse with.
    extensions: Iterable[str] = DEFAULT_EXTENSIONS

    def glue(self, key: str) -> dict[str, Any]:
        """The MIME bundle glued under ``key`` (``{"text/plain": "0.5"}``)."""
        raise ConversionError(f"no glued value {key!r}")

    def cite(self, role: str, target: str) -> tuple[str, list[str]]:
        """The citation text the book shows for ``{cite:<role>}`target```, and the keys it cites."""
        raise ConversionError(f"cannot resolve the citation {target!r}")

    def xref(self, role: str, target: str, title: str | None) -> Link:
        """A cross-reference (``doc``, ``ref``, ``numref``, ``eq``, ``term``) as text and URL."""
        raise ConversionError(f"cannot resolve {{{role}}}`{target}`")

    def equation_number(self, label: str) -> str | None:
        """The number the book gives the equation labelled ``label`` (None: unnumbered)."""
        return None

    def link(self, target: str) -> str | None:
        """The URL for a Markdown link's local target (``page.md``, ``#label``); None keeps it."""
        return None

    def bibliography(self, keys: list[str]) -> list[tuple[str, str]]:
        """The full entries of ``keys``: (citation text, entry as Markdown), in the order to list them."""
        return [(key, key) for key in keys]

    def read_file(self, path: str) -> bytes:
        """A file that a figure, image or literalinclude names, relative to the notebook's source."""
        raise ConversionError(f"cannot read {path!r}")

    def literalinclude(self, path: str, options: dict[str, str]) -> str:
        """The text a ``literalinclude`` shows."""
        raise ConversionError(f"cannot include {path!r}")

    def substitution(self, name: str) -> str:
        raise ConversionError(f"no substitution {name!r}")


@dataclass
class State:
    """What one notebook's conversion collects across its cells."""

    cited: list[str] = field(default_factory=list)
    attachments: dict[str, dict[str, str]] = field(default_factory=dict)
    footnotes: dict[str, int] = field(default_factory=dict)
    roles: Counter = field(default_factory=Counter)
    directives: Counter = field(default_factory=Counter)

    def cite(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key not in self.cited:
                self.cited.append(key)


# --------------------------------------------------------------------------------------------------
# Parsing with myst-parser's markdown-it configuration
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _parser(extensions: tuple[str, ...]):
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    return create_md_parser(MdParserConfig(enable_extensions=set(extensions)), RendererHTML)


def _parse(text: str, extensions: Iterable[str]):
    return _parser(tuple(sorted(extensions))).parse(text, {})


def raw_myst(text: str, extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> Counter:
    """The MyST-only constructs in Markdown ``text``, by kind (``{glue:text}``, ``:::{admonition}``,
    ``(label)=``, ...), as MyST's own parser finds them; empty for plain Jupyter Markdown."""
    found: Counter = Counter()
    for token in _parse(text, extensions):
        if token.type in ("fence", "colon_fence") and token.info.strip().startswith("{"):
            name = token.info.strip()[1:].split("}", 1)[0]
            found[f"{token.markup[:3]}{{{name}}}"] += 1
            if name not in ("code-cell", "code-block", "code", "sourcecode", "math", "raw"):
                found.update(raw_myst(_directive_options(token.content)[1], extensions))   # what it holds
        elif token.type in ("myst_target", "myst_line_comment", "math_block_label", "amsmath", "dl_open"):
            found[{"myst_target": "(label)=", "myst_line_comment": "% comment", "amsmath": "\\begin{...} block",
                   "math_block_label": "$$ (label)", "dl_open": "definition list"}[token.type]] += 1
        for child in token.children or []:
            if child.type == "myst_role":
                found[f"{{{child.meta['name']}}}"] += 1
            elif child.type == "footnote_ref":
                found["[^footnote]"] += 1
        if token.type == "footnote_reference_open":
            found["[^footnote]:"] += 1
        if token.type == "substitution_block":
            found["{{substitution}}"] += 1
        found["{{substitution}}"] += sum(1 for c in token.children or [] if c.type == "substitution_inline")
    return +found


def count_raw_myst(paths: Iterable[Path], extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> tuple[int, int, Counter]:
    """Over the notebooks ``paths``: Markdown cells, cells with raw MyST, and the constructs by kind."""
    cells = dirty = 0
    kinds: Counter = Counter()
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "markdown":
                continue
            cells += 1
            found = raw_myst(cell.source, extensions)
            if found:
                dirty += 1
                kinds.update(found)
    return cells, dirty, kinds


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------

def escape(text: str) -> str:
    """Text that Markdown shows as it is (a glued value, a citation)."""
    return ESCAPE.sub(r"\\\1", text)


def _link(text: str, url: str) -> str:
    return f"[{text.replace('[', '(').replace(']', ')')}]({url.replace(' ', '%20').replace(')', '%29')})"


def _prefixes(line: str, marker_at: int) -> tuple[str, str]:
    """The container prefix of a block's first line, and the one its other lines need."""
    first = line[:marker_at]
    rest = "".join(c if c in " >\t" else " " for c in first)
    return first, rest


def _with_prefix(text: str, first: str, rest: str) -> list[str]:
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        prefix = first if i == 0 else rest
        out.append((prefix + line) if line.strip() else prefix.rstrip())
    return out


def _padded(new: list[str], lines: list[str], start: int, end: int, rest: str) -> list[str]:
    """A block that replaces ``lines[start:end]``, with blank lines (in its container) around it."""
    if not new:
        return new
    blank = rest.rstrip()
    before = [blank] if start > 0 and lines[start - 1].strip(" >\t") else []
    after = [blank] if end < len(lines) and lines[end].strip(" >\t") else []
    return before + new + after


def _blockquote(text: str) -> str:
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.split("\n"))


def _split_title(text: str) -> tuple[str | None, str]:
    match = EXPLICIT_TITLE.match(text)
    if match:
        return match.group(1), match.group(2)
    return None, text


def fix_math(tex: str, resolver: Resolver, label: str | None = None, display: bool = False) -> str:
    """Math as JupyterLab's MathJax and Colab's KaTeX render it: the book's macros written out,
    ``\\label`` replaced by the book's equation number (``\\tag``)."""
    for name, definition in resolver.math_macros.items():
        if not isinstance(definition, str):
            raise ConversionError(f"the math macro \\{name} takes arguments; only plain macros are written out")
        tex = re.sub(r"\\" + re.escape(name) + r"(?![A-Za-z])", lambda _m, d=definition: d, tex)
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    tex = re.sub(r"\s*\\label\{[^}]*\}", "", tex)
    if display:
        for candidate in ([label] if label else []) + labels:
            number = resolver.equation_number(candidate)
            if number:
                tex = tex.rstrip() + f" \\tag{{{number}}}"
                break
    return tex


def _math_block(tex: str, resolver: Resolver, label: str | None = None) -> str:
    tex = tex.strip("\n")
    env = re.match(r"^\s*\\begin\{([a-z]+\*?)\}(.*)\\end\{\1\}\s*$", tex, flags=re.S)
    if env and env.group(1) in MATH_ENVIRONMENTS:   # a top-level amsmath environment
        inner = MATH_ENVIRONMENTS[env.group(1)]
        tex = env.group(2).strip("\n") if inner is None else f"\\begin{{{inner}}}{env.group(2)}\\end{{{inner}}}"
    return "$$\n" + fix_math(tex, resolver, label, display=True).strip("\n") + "\n$$"


def _glue_text(bundle: dict[str, Any], fmt: str, key: str) -> str:
    try:
        from myst_nb.core.variables import format_plain_text
    except ImportError:  # pragma: no cover - myst-nb builds the book; this is its rule
        def format_plain_text(text: str, fmt_spec: str) -> str:
            try:
                value = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                value = text
            if not fmt_spec:
                return str(value)
            kind = fmt_spec[-1]
            value = str(value) if kind == "s" else int(value) if kind in "bcdoxX" else \
                float(value) if kind in "eEfFgGn%" else value
            return format(value, fmt_spec)
    if "text/plain" not in bundle:
        raise ConversionError(f"the glued value {key!r} has no text/plain form")
    try:
        return format_plain_text(bundle["text/plain"], fmt)
    except Exception as exc:  # noqa: BLE001 - the book's build fails the same way
        raise ConversionError(f"cannot format the glued value {key!r} with {fmt!r}: {exc}") from exc


def _attach(state: State, name: str, data: bytes, mime: str) -> str:
    stem = re.sub(r"[^\w.-]", "_", Path(name).name) or "image"
    key = stem
    if key in state.attachments and state.attachments[key] != {mime: base64.b64encode(data).decode()}:
        key = f"{hashlib.sha1(data).hexdigest()[:8]}-{stem}"
    state.attachments[key] = {mime: base64.b64encode(data).decode()}
    return f"attachment:{key}"


def _image(path: str, alt: str, resolver: Resolver, state: State) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*:", path):   # a URL: leave it
        return f"![{alt}]({path})"
    mime = mimetypes.guess_type(path)[0] or "image/png"
    return f"![{alt}]({_attach(state, path, resolver.read_file(path), mime)})"


def _glue_display(bundle: dict[str, Any], key: str, resolver: Resolver, state: State, inline: bool) -> str:
    """The richest form of a glued value that Markdown can hold."""
    if "text/markdown" in bundle:
        return bundle["text/markdown"].strip()
    for mime in ("image/png", "image/jpeg", "image/gif", "image/svg+xml"):
        if mime in bundle and not inline:
            data = bundle[mime]
            raw = data.encode() if mime == "image/svg+xml" else base64.b64decode(data)
            return f"![{key}]({_attach(state, key + mimetypes.guess_extension(mime), raw, mime)})"
    if "text/latex" in bundle and not inline:
        return _math_block(bundle["text/latex"].strip().strip("$"), resolver)
    return escape(_glue_text(bundle, "", key))


class _Converter:
    def __init__(self, resolver: Resolver, state: State):
        self.resolver = resolver
        self.state = state
        self.extensions = tuple(sorted(resolver.extensions))

    # -- blocks ---------------------------------------------------------------------------------
    def markdown(self, text: str) -> str:
        lines = text.split("\n")
        tokens = _parse(text, self.extensions)
        expected_roles = sum(1 for t in tokens for c in (t.children or []) if c.type == "myst_role")
        # first line -> (end line, new lines, whether the new lines are ordinary Markdown to scan)
        replaced: dict[int, tuple[int, list[str], bool]] = {}
        verbatim: set[int] = set()
        for token in tokens:
            if not token.map:
                continue
            start, end = token.map
            if token.type in ("fence", "colon_fence"):
                info = token.info.strip()
                if not info.startswith("{"):
                    verbatim.update(range(start, end))
                    continue
                marker_at = lines[start].index(token.markup[0] * 3)
                first, rest = _prefixes(lines[start], marker_at)
                name, _, argument = info[1:].partition("}")
                body = self.directive(name.strip(), argument.strip(), token.content)
                new = _with_prefix(body, first, rest) if body else []
                replaced[start] = (end, _padded(new, lines, start, end, rest), False)
            elif token.type in ("code_block", "html_block"):
                verbatim.update(range(start, end))
            elif token.type in ("math_block", "math_block_label", "amsmath"):
                marker_at = len(lines[start]) - len(lines[start].lstrip(" >\t"))
                first, rest = _prefixes(lines[start], marker_at)
                if token.type == "amsmath":
                    self.state.directives["\\begin{...}"] += 1
                    # mdit-py-plugins' amsmath map stops a line short of the \end{...} line
                    end = max(end, start + token.content.rstrip("\n").count("\n") + 1)
                label = token.info.strip() if token.type == "math_block_label" else None
                new = _with_prefix(_math_block(token.content, self.resolver, label), first, rest)
                replaced[start] = (end, _padded(new, lines, start, end, rest), False)
            elif token.type in ("myst_target", "myst_line_comment", "myst_block_break", "front_matter"):
                replaced[start] = (end, [], False)
            elif token.type == "dl_open":
                replaced[start] = (end, self.deflist(lines[start:end]), True)
        out: list[tuple[str, bool]] = []   # (line, whether it is code to keep exactly as it is)
        pending: list[str] = []   # consecutive lines of ordinary Markdown, scanned for roles together
        found = 0

        def flush() -> int:
            if not pending:
                return 0
            converted, count = self.inline("\n".join(pending))
            out.extend((line, False) for line in converted.split("\n"))
            pending.clear()
            return count

        i = 0
        while i < len(lines):
            if i in replaced:
                found += flush()
                end, new, scan = replaced[i]
                if scan:
                    pending.extend(new)
                    found += flush()
                else:
                    out.extend((line, False) for line in new)
                i = end
            elif i in verbatim:
                found += flush()
                out.append((lines[i], True))
                i += 1
            else:
                pending.append(lines[i])
                i += 1
        found += flush()
        if found != expected_roles:
            raise ConversionError(f"found {found} roles where MyST's parser sees {expected_roles} in:\n{text}")
        # one blank line where a removed or replaced block leaves several (code keeps its own)
        kept: list[str] = []
        for k, (line, code) in enumerate(out):
            blank = not line.strip(" >\t")
            repeated = bool(kept) and line.rstrip() == kept[-1].rstrip() and not (k and out[k - 1][1])
            if blank and not code and (repeated or (not kept and not line.strip())):
                continue
            kept.append(line)
        while kept and not kept[-1].strip():
            kept.pop()
        return "\n".join(kept)

    def deflist(self, lines: list[str]) -> list[str]:
        """A definition list as a bulleted list with bold terms."""
        self.state.directives["definition list"] += 1
        out = []
        for line in lines:
            definition = re.match(r"^(\s*)[:~]\s+(.*)$", line)
            if definition:
                if out and out[-1].startswith("- **") and out[-1].endswith("**"):
                    out[-1] += ": " + definition.group(2)
                else:
                    out.append("  " + definition.group(2))
            elif line.strip() and not line.startswith((" ", "\t")):
                out.append(f"- **{line.strip()}**")
            else:
                out.append(line)
        return out

    # -- directives ------------------------------------------------------------------------------
    def directive(self, name: str, argument: str, content: str) -> str:
        options, body = _directive_options(content)
        self.state.directives[name] += 1
        classes = options.get("class", "").split()
        if name in ("admonition", "dropdown") or name in ADMONITION_TITLES:
            title = argument if name in ("admonition", "dropdown") else ADMONITION_TITLES[name]
            if name in ADMONITION_TITLES and argument:
                body = argument + ("\n" + body if body else "")
            return self.admonition(title or "Note", body, dropdown=name == "dropdown" or "dropdown" in classes)
        if name in ("margin", "sidebar", "topic", "epigraph", "pull-quote", "highlights"):
            inner = self.markdown(body)
            return _blockquote((f"**{self.inline_only(argument)}**\n\n" if argument else "") + inner)
        if name in ("tab-set", "grid", "card-carousel", "div", "container", "tab-set-code"):
            return self.markdown(body)
        if name in ("tab-item", "card", "grid-item-card", "grid-item"):
            inner = self.markdown(body)
            return (f"**{self.inline_only(argument)}**\n\n" if argument else "") + inner
        if name in ("math",):
            return _math_block(body, self.resolver, options.get("label") or options.get("name"))
        if name in ("code-block", "code", "sourcecode"):
            return f"```{argument}\n{body}\n```"
        if name == "literalinclude":
            text = self.resolver.literalinclude(argument, options).rstrip("\n")
            language = options.get("language") or {".py": "python"}.get(Path(argument).suffix, "")
            return f"```{language}\n{text}\n```"
        if name in ("figure", "image"):
            picture = _image(argument, options.get("alt", ""), self.resolver, self.state)
            caption = self.markdown(body) if name == "figure" and body else ""
            label = options.get("name")
            if caption and label:
                try:
                    link = self.resolver.xref("numref", label, None)
                    caption = f"*{link.text}:* {caption}"
                except ConversionError:
                    pass
            return picture + (f"\n\n{caption}" if caption else "")
        if name in ("glue", "glue:", "glue:any", "glue:figure", "glue:md", "glue:math"):
            bundle = self.resolver.glue(argument)
            if name == "glue:math":
                return _math_block(bundle.get("text/latex", "").strip().strip("$"), self.resolver, options.get("label"))
            shown = _glue_display(bundle, argument, self.resolver, self.state, inline=False)
            caption = self.markdown(body) if body else ""
            return shown + (f"\n\n{caption}" if caption else "")
        if name in ("bibliography", "toctree", "contents", "tableofcontents", "index", "nb-exec-table"):
            return ""   # the notebook ends with the entries it cites; the rest belongs to the book
        if name == "only":
            return self.markdown(body) if "html" in argument else ""
        if name == "raw":
            return body if argument.strip() == "html" else ""
        if name in ("table", "list-table"):
            title = f"**{self.inline_only(argument)}**\n\n" if argument else ""
            return title + (self.markdown(body) if name == "table" else _list_table(body, self))
        raise ConversionError(f"no conversion for the directive {{{name}}} (add one to book/_ext/myst_to_jupyter.py)")

    def admonition(self, title: str, body: str, dropdown: bool) -> str:
        title_md = self.inline_only(title)
        inner = self.markdown(body)
        if dropdown:
            # Closed until clicked, as in the book: HTML that JupyterLab and Colab both render; the
            # Markdown inside it is separated by blank lines, so it renders as Markdown.
            summary = _markdown_to_summary(title_md)
            return f"<details>\n<summary><b>{summary}</b></summary>\n\n{_blockquote(inner)}\n\n</details>"
        return _blockquote(f"**{title_md}**" + (f"\n\n{inner}" if inner else ""))

    # -- inline ----------------------------------------------------------------------------------
    def inline_only(self, text: str) -> str:
        converted, _ = self.inline(text)
        return converted

    def inline(self, text: str) -> tuple[str, int]:
        """Rewrite roles, math macros, local links and substitutions in ordinary Markdown text."""
        out: list[str] = []
        roles = 0
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == "\\" and i + 1 < n:
                out.append(text[i:i + 2])
                i += 2
                continue
            if c == "{":
                role = ROLE_START.match(text, i)
                if role:
                    ticks = role.group(2)
                    start = role.end()
                    close = text.find(ticks, start + 1)
                    if close != -1:
                        name, content = role.group(1), text[start:close].replace("\n", " ")
                        out.append(self.role(name, content))
                        roles += 1
                        i = close + len(ticks)
                        continue
                sub = SUBSTITUTION.match(text, i) if "substitution" in self.extensions else None
                if sub:
                    out.append(self.resolver.substitution(sub.group(1)))
                    i = sub.end()
                    continue
            if c == "`":
                run = len(text[i:]) - len(text[i:].lstrip("`"))
                ticks = "`" * run
                j = i + run
                while True:   # a closing run of exactly the same length
                    j = text.find(ticks, j)
                    if j == -1 or text[j + run:j + run + 1] != "`":
                        break
                    j += len(text[j:]) - len(text[j:].lstrip("`"))
                if j != -1:
                    out.append(text[i:j + run])
                    i = j + run
                else:
                    out.append(ticks)
                    i += run
                continue
            if c == "$":
                double = text.startswith("$$", i)
                j = i + (2 if double else 1)
                while True:
                    j = text.find("$$" if double else "$", j)
                    if j == -1 or text[j - 1] != "\\":
                        break
                    j += 1
                if j != -1 and j > i + (2 if double else 1):
                    width = 2 if double else 1
                    tex = text[i + width:j]
                    out.append("$" * width + fix_math(tex, self.resolver) + "$" * width)
                    i = j + width
                    continue
            if c == "<":   # inline HTML or an autolink: as it is
                tag = re.match(r"<(?:[a-zA-Z][^<>]*|/[a-zA-Z][^<>]*|!--.*?--)>", text[i:], flags=re.S)
                if tag:
                    out.append(tag.group(0))
                    i += tag.end()
                    continue
            if c == "]" and text.startswith("](", i):
                target_end = _closing_paren(text, i + 1)
                if target_end != -1:
                    target = text[i + 2:target_end]
                    url, _, title = target.strip().partition(" ")
                    is_image = _opening_bracket_is_image(out)
                    new = self.link_target(url.strip("<>"), is_image)
                    out.append("](" + (new + (f" {title}" if title else "")) + ")")
                    i = target_end + 1
                    continue
            if c == "[" and text.startswith("[^", i):
                footnote = re.match(r"\[\^([^\]\s]+)\](:?)", text[i:])
                if footnote:
                    number = self.state.footnotes.setdefault(footnote.group(1), len(self.state.footnotes) + 1)
                    out.append(f"<sup>{number}</sup>" + (" " if footnote.group(2) else ""))
                    i += footnote.end()
                    continue
            out.append(c)
            i += 1
        return "".join(out), roles

    def link_target(self, url: str, is_image: bool) -> str:
        if not url or re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("//"):
            return url
        if is_image:
            mime = mimetypes.guess_type(url)[0] or "image/png"
            return _attach(self.state, url, self.resolver.read_file(url), mime)
        return self.resolver.link(url) or url

    def role(self, name: str, content: str) -> str:
        self.state.roles[name] += 1
        resolver = self.resolver
        if name in ("glue", "glue:", "glue:any", "glue:text", "glue:md"):
            if name == "glue:text":
                key, fmt = _glue_key_format(content)
                return escape(_glue_text(resolver.glue(key), fmt, key))
            key = content.split(":")[0] if name == "glue:md" and "::" not in content else content
            bundle = resolver.glue(key)
            if name == "glue:md":
                return bundle.get("text/markdown", escape(_glue_text(bundle, "", key))).strip()
            return _glue_display(bundle, key, resolver, self.state, inline=True)
        if name == "cite" or name.startswith("cite:"):
            text, keys = resolver.cite(name.partition(":")[2] or "p", content)
            self.state.cite(keys)
            return escape(text)
        if name in XREF_ROLES or re.match(r"^(py|std|math):", name):
            title, target = _split_title(content)
            role = name.split(":")[-1] if name.startswith("std:") else name
            try:
                link = resolver.xref(role, target.strip(), title)
            except ConversionError:
                if name.startswith("py:"):
                    return f"`{title or target}`"
                raise
            return _link(link.text, link.url)
        if name == "math":
            return "$" + fix_math(content, resolver) + "$"
        if name in ("fa", "fas", "far", "fab"):
            # an icon of the book's buttons, named: "the rocket button" (no icon font in a notebook)
            return content.strip().split()[-1].removeprefix("fa-").replace("-", " ")
        if name in CODE_ROLES:
            return f"<kbd>{content}</kbd>" if name == "kbd" else f"`{content}`"
        if name in ("sub", "subscript"):
            return f"<sub>{content}</sub>"
        if name in ("sup", "superscript"):
            return f"<sup>{content}</sup>"
        if name in ("abbr", "dfn", "title-reference", "emphasis"):
            return f"*{content}*" if name in ("dfn", "title-reference", "emphasis") else content
        if name == "strong":
            return f"**{content}**"
        if name == "download":
            title, target = _split_title(content)
            return _link(title or Path(target).name, resolver.link(target.strip()) or target.strip())
        raise ConversionError(f"no conversion for the role {{{name}}} (add one to book/_ext/myst_to_jupyter.py)")


def _glue_key_format(content: str) -> tuple[str, str]:
    """``key:fmt`` (or ``doc::key:fmt``) as myst-nb splits it."""
    head, sep, fmt = content.rpartition(":")
    if not sep or not head or head.endswith(":"):   # no format, or the ':' belongs to a 'doc::key'
        return content, ""
    return head, fmt


def _closing_paren(text: str, open_at: int) -> int:
    """The index of the ')' that closes the '(' at ``open_at`` (-1: none in this paragraph)."""
    depth, j = 0, open_at
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j
        elif text.startswith("\n\n", j):
            return -1
        j += 1
    return -1


def _opening_bracket_is_image(out: list[str]) -> bool:
    """Whether the link whose ']' comes next was opened by '!['."""
    so_far = "".join(out)
    depth = 0
    for j in range(len(so_far) - 1, -1, -1):
        if so_far[j] == "]":
            depth += 1
        elif so_far[j] == "[":
            if depth == 0:
                return j > 0 and so_far[j - 1] == "!"
            depth -= 1
    return False


def _markdown_to_summary(title: str) -> str:
    """A title in Markdown as the HTML a <summary> needs (it is not Markdown-rendered there)."""
    import html

    text = html.escape(title, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\\*])\*(?!\*)(.+?)(?<!\\)\*", r"<i>\1</i>", text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)
    return re.sub(r"\\([\\`*_\[\]<>$|])", r"\1", text)


def _directive_options(content: str) -> tuple[dict[str, str], str]:
    lines = content.split("\n")
    options: dict[str, str] = {}
    if lines and lines[0].strip() == "---":
        import yaml

        end = next((k for k in range(1, len(lines)) if lines[k].strip() == "---"), None)
        if end is None:
            raise ConversionError("a directive's YAML options are not closed with ---")
        options = {str(k): ("" if v is None else str(v)) for k, v in (yaml.safe_load("\n".join(lines[1:end])) or {}).items()}
        lines = lines[end + 1:]
    else:
        while lines and (match := re.match(r"^:([\w-]+):\s*(.*)$", lines[0])):
            options[match.group(1)] = match.group(2).strip()
            lines = lines[1:]
    return options, "\n".join(lines).strip("\n")


def _list_table(body: str, converter: _Converter) -> str:
    rows: list[list[str]] = []
    for line in body.split("\n"):
        if re.match(r"^\* - ", line):
            rows.append([line[4:].strip()])
        elif re.match(r"^  - ", line) and rows:
            rows[-1].append(line[4:].strip())
        elif line.strip() and rows:
            rows[-1][-1] += " " + line.strip()
    if not rows:
        raise ConversionError("a list-table without rows")
    cells = [[converter.inline_only(c).replace("|", "\\|") for c in row] for row in rows]
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def convert_markdown(text: str, resolver: Resolver, state: State | None = None) -> str:
    """Markdown ``text`` of a MyST notebook cell as plain Jupyter Markdown."""
    return _Converter(resolver, state or State()).markdown(text)


# --------------------------------------------------------------------------------------------------
# Code cells the book hides
# --------------------------------------------------------------------------------------------------

def _claim_texts(source: str) -> list[str]:
    """The statements of the ``claim(holds, text, ...)`` calls in ``source``, as written."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    texts = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name != "claim":
            continue
        arg = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "text"), None)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            texts.append(arg.value)
        elif isinstance(arg, ast.JoinedStr):
            parts = list(arg.values)
            while parts and not isinstance(parts[-1], ast.Constant):   # drop a trailing ": {values}"
                parts.pop()
            text = "".join(p.value if isinstance(p, ast.Constant) else "{" + ast.unparse(p.value) + "}" for p in parts)
            texts.append(text.rstrip(" :;,="))
        elif arg is not None:
            texts.append(ast.unparse(arg))
    return [t for t in texts if t]


def claim_comment(source: str, limit: int = 200) -> str | None:
    """One comment line that says what a hidden cell checks, or None when it checks nothing."""
    claims = _claim_texts(source)
    if claims:
        head = f"# Checks {'the claim' if len(claims) == 1 else f'{len(claims)} claims'} of the text above on this run (the book hides this cell): "
        shown: list[str] = []
        for k, claim in enumerate(claims):
            more = len(claims) - k - 1
            tail = f"; and {more} more" if more else ""
            candidate = "; ".join(shown + [claim])
            if shown and len(head) + len(candidate) + len(tail) > limit:
                return head + "; ".join(shown) + f"; and {len(claims) - len(shown)} more"
            shown.append(claim)
        return head + "; ".join(shown)
    if re.search(r"(^|[^\w.])glue\(", source):
        return "# Records numbers that the text above quotes (the book hides this cell)."
    return None


# --------------------------------------------------------------------------------------------------
# Notebooks
# --------------------------------------------------------------------------------------------------

def _cell_id(index: int, source: str) -> str:
    return f"c{index:03d}-" + hashlib.sha1(source.encode()).hexdigest()[:8]


def convert_notebook(nb, resolver: Resolver, *, note=None, references_title: str = "Bibliography",
                     references_intro: str = "") -> nbformat.NotebookNode:
    """A copy of notebook ``nb`` (a MyST notebook, read with jupytext) that reads as plain Jupyter Markdown.

    ``note`` (Markdown, or a function of the conversion's :class:`State` that returns it) goes under
    the notebook's title; the works cited are listed at the end under ``references_title``. Raises
    :class:`ConversionError` if a Markdown cell still holds raw MyST.
    """
    state = State()
    converter = _Converter(resolver, state)
    out = nbformat.v4.new_notebook()
    out.metadata = copy.deepcopy(dict(nb.metadata))
    out.metadata.pop("jupytext", None)   # not paired: JupyterLab's jupytext must not write a .md beside it
    for index, cell in enumerate(nb.cells):
        cell_id = cell.get("id") or _cell_id(index, cell.source)
        metadata = copy.deepcopy(dict(cell.get("metadata", {})))
        if cell.cell_type == "markdown":
            state.attachments = {}
            try:
                source = converter.markdown(cell.source)
            except ConversionError as exc:
                raise ConversionError(f"cell {index}: {exc}") from None
            if not source.strip():
                continue   # a cell that held only labels or comments
            new = nbformat.v4.new_markdown_cell(source, metadata=metadata, id=cell_id)
            if state.attachments:
                new.attachments = dict(state.attachments)
        elif cell.cell_type == "code":
            source = cell.source
            tags = metadata.get("tags", [])
            if "remove-cell" in tags or "remove-input" in tags:
                comment = claim_comment(source)
                if comment and comment not in source:
                    source = comment + "\n" + source
            new = nbformat.v4.new_code_cell(source, metadata=metadata, id=cell_id)
        else:
            new = nbformat.v4.new_raw_cell(cell.source, metadata=metadata, id=cell_id)
        out.cells.append(new)

    if callable(note):
        note = note(state)
    if note:
        for cell in out.cells:
            if cell.cell_type == "markdown":
                title = re.search(r"^# .*$", cell.source, flags=re.M)
                if title:
                    cell.source = cell.source[:title.end()] + "\n\n" + note + cell.source[title.end():]
                else:
                    out.cells.insert(0, nbformat.v4.new_markdown_cell(note, id="c000-note"))
                break
    if state.cited:
        entries = resolver.bibliography(state.cited)
        lines = [f"## {references_title}", ""] + ([references_intro, ""] if references_intro else [])
        lines += [f"- **{escape(label)}.** {entry}" for label, entry in entries]
        out.cells.append(nbformat.v4.new_markdown_cell("\n".join(lines), id="c999-references"))

    leftovers = {i: raw_myst(c.source, resolver.extensions) for i, c in enumerate(out.cells) if c.cell_type == "markdown"}
    leftovers = {i: dict(found) for i, found in leftovers.items() if found}
    if leftovers:
        raise ConversionError(f"raw MyST left in the converted notebook (cell: constructs): {leftovers}")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    count = sub.add_parser("count", help="count Markdown cells with raw MyST in notebooks")
    count.add_argument("notebooks", nargs="+", type=Path)
    count.add_argument("--each", action="store_true", help="one line per notebook as well")
    args = parser.parse_args(argv)
    if args.each:
        for path in args.notebooks:
            cells, dirty, kinds = count_raw_myst([path])
            print(f"{path}: {dirty} of {cells} Markdown cells carry raw MyST ({sum(kinds.values())} constructs)")
    cells, dirty, kinds = count_raw_myst(args.notebooks)
    print(f"{len(args.notebooks)} notebooks: {dirty} of {cells} Markdown cells carry raw MyST; "
          f"{sum(kinds.values())} constructs")
    for kind, number in kinds.most_common():
        print(f"  {number:5d}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
