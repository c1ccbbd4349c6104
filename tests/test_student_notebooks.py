"""The converter behind the student notebooks (book/_ext/myst_to_jupyter.py): MyST in, plain Jupyter
Markdown out. A small sample holds every construct the lessons use, and those the book could use; the
last tests run the converter over every lesson and exercise with stand-in values (the book build runs
it with the real ones, and the browser test opens one result in JupyterLab)."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import myst_to_jupyter as m  # noqa: E402

BOOK = "https://optim-course.github.io/optim-course/"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


class FakeBook(m.Resolver):
    """What a build of the book would know about the sample below."""

    math_macros = {"R": r"\mathbb{R}"}
    GLUE = {"n_train": "1437", "lr_512": "0.4000000001", "spread": "3.14159", "share": "0.256",
            "name": "'LAMB_v2'", "table": None}
    AUTHORS = {"goyal2017accurate": ("Goyal et al.", "2017"), "you2020lamb": ("You et al.", "2020"),
               "kingma2015adam": ("Kingma and Ba", "2015")}
    LABELS = {"fig-ratios": ("Fig. 5.1", "lessons/05_large_batch.html#fig-ratios"),
              "sec-trust": ("Trust ratios during training", "lessons/05_large_batch.html#sec-trust"),
              "eq-lars": ("(5.2)", "lessons/05_large_batch.html#equation-eq-lars")}

    def glue(self, key):
        if key not in self.GLUE:
            raise m.ConversionError(f"no glued value {key!r}")
        if key == "table":
            return {"text/markdown": "| a | b |\n|---|---|\n| 1 | 2 |", "text/plain": "<table>"}
        return {"text/plain": self.GLUE[key]}

    def cite(self, role, target):
        keys = [k.strip() for k in target.split(",")]
        parts = [self.AUTHORS[k] for k in keys]
        if role == "p":
            return "(" + "; ".join(f"{a}, {y}" for a, y in parts) + ")", keys
        return ", ".join(f"{a} ({y})" for a, y in parts), keys

    def xref(self, role, target, title):
        if role == "doc":
            titles = {"/lessons/06_memory_frugal": "Memory-frugal optimizers", "/book/notation": "Notation"}
            return m.Link(title or titles[target], BOOK + target.strip("/") + ".html")
        if target not in self.LABELS:
            raise m.ConversionError(f"no label {target}")
        text, url = self.LABELS[target]
        if role == "numref" and title:
            text = title.replace("{number}", text.split()[-1])
        elif role == "ref" and title:
            text = title
        return m.Link(text, BOOK + url)

    def equation_number(self, label):
        return self.LABELS[label][0].strip("()") if label in self.LABELS else None

    def link(self, target):
        return BOOK + "lessons/02_sgd_momentum.html" if target == "02_sgd_momentum.md" else None

    def bibliography(self, keys):
        return [(f"{self.AUTHORS[k][0]}, {self.AUTHORS[k][1]}", f"Full entry of *{k}*.") for k in keys]

    def read_file(self, path):
        assert path == "images/curve.png"
        return PNG


SAMPLE = r"""# Large batches

:::{admonition} Run this lesson
:class: tip
Read it here, or run it yourself: the {fa}`rocket` button at the top opens the notebook in Colab.
:::

The task: {glue:text}`n_train` training images; the linear rule gives {glue:text}`lr_512:.2f`, within a
factor of {glue:text}`spread:.1f` ({glue:text}`share:.0%` of them), for {glue:text}`name`. This is the
**linear scaling rule** of {cite:t}`goyal2017accurate`, used with warmup {cite:p}`goyal2017accurate,you2020lamb`;
Adam {cite:p}`kingma2015adam` is covered in {doc}`the lesson on memory
</lessons/06_memory_frugal>` and in {doc}`/book/notation`, see also [lesson 02](02_sgd_momentum.md).
{numref}`fig-ratios` shows the ratios, {numref}`Figure {number} <fig-ratios>` again; {ref}`sec-trust` and
{ref}`the trust section <sec-trust>` explain them; equation {eq}`eq-lars` defines LARS. Inline code
`{glue:text}` stays code, as does ``a `{cite:p}` b``; $\theta \in \R^d$ and $\lVert g \rVert$ are math.

(sec-rule)=
## The rule

% a comment the book does not show

$$
\hat\eta = k\eta, \qquad
\begin{aligned} a &= b \\ c &= d \end{aligned}
$$ (eq-lars)

$$
f(x) = \begin{cases} x^2 & x > 0 \\ 0 & \text{else} \end{cases}, \quad
A = \begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}
$$

```{math}
:label: eq-lars
\lVert \theta \rVert \in \R
```

\begin{align}
x &= 1 \\ y &= 2
\end{align}

```{admonition} Backticks
:class: warning
A warning with {glue:text}`n_train` and a list:

- one
- two
```

```{note}
A plain note.
```

- An item with a nested warning:

  :::{warning}
  Nested {cite:t}`kingma2015adam`.
  :::

::::{tab-set}
:::{tab-item} PyTorch
`torch.optim.Adam`
:::
:::{tab-item} course_lib
`course_lib.optim.Adam`
:::
::::

```{figure} images/curve.png
:name: fig-curve
:alt: a curve

The loss curve.
```

```{glue:md} table
```

LARS
: layer-wise adaptive rate scaling

```python
x = "{glue:text}`n_train`"   # code stays as written
```

| optimizer | lr |
|---|---|
| LAMB {cite:p}`you2020lamb` | {glue:text}`lr_512:.3g` |

:::{admonition} Answers
:class: dropdown
1. The rate grows 8 times: $\eta \to 8\eta$.
2. See {cite:t}`you2020lamb`.
:::
"""


@pytest.fixture(scope="module")
def converted():
    state = m.State()
    return m.convert_markdown(SAMPLE, FakeBook(), state), state


def test_the_sample_holds_every_construct(converted):
    found = m.raw_myst(SAMPLE)
    for construct in ["{glue:text}", "{cite:p}", "{cite:t}", "{doc}", "{numref}", "{ref}", "{eq}", "{fa}",
                      ":::{admonition}", "```{admonition}", "```{note}", ":::{tab-set}", "```{math}", "```{figure}",
                      "```{glue:md}", "(label)=", "% comment", "$$ (label)", "\\begin{...} block", "definition list"]:
        assert found[construct], f"the sample lacks {construct}: {found}"


def test_no_raw_myst_is_left(converted):
    text, _ = converted
    assert not m.raw_myst(text), m.raw_myst(text)
    for raw in ["{glue", "{cite", "{numref", "{doc}", "{ref}", "{eq}", "```{", ":::{", "(sec-rule)=", "% a comment"]:
        outside_code = text.replace('x = "{glue:text}`n_train`"', "").replace("`{glue:text}`", "").replace("``a `{cite:p}` b``", "")
        assert raw not in outside_code, raw


def test_glued_values_are_written_in_with_the_books_format(converted):
    text, _ = converted
    assert "1437 training images" in text
    assert "gives 0.40, within a\nfactor of 3.1 (26% of them), for LAMB\\_v2" in text
    assert "| LAMB (You et al., 2020) | 0.4 |" in text
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in text   # {glue:md}


def test_citations_read_author_year_and_are_collected(converted):
    text, state = converted
    assert "of Goyal et al. (2017), used with warmup (Goyal et al., 2017; You et al., 2020)" in text
    assert "Adam (Kingma and Ba, 2015)" in text
    assert sorted(state.cited) == ["goyal2017accurate", "kingma2015adam", "you2020lamb"]


def test_references_link_to_the_published_book(converted):
    text, _ = converted
    assert f"[the lesson on memory]({BOOK}lessons/06_memory_frugal.html)" in text
    assert f"[Notation]({BOOK}book/notation.html)" in text
    assert f"[lesson 02]({BOOK}lessons/02_sgd_momentum.html)" in text
    assert f"[Fig. 5.1]({BOOK}lessons/05_large_batch.html#fig-ratios)" in text
    assert f"[Figure 5.1]({BOOK}lessons/05_large_batch.html#fig-ratios)" in text
    assert f"[the trust section]({BOOK}lessons/05_large_batch.html#sec-trust)" in text
    assert f"equation [(5.2)]({BOOK}lessons/05_large_batch.html#equation-eq-lars)" in text


def test_admonitions_dropdowns_and_tabs_are_plain_markdown(converted):
    text, _ = converted
    assert "> **Run this lesson**\n>\n> Read it here, or run it yourself: the rocket button" in text
    assert "> **Backticks**\n>\n> A warning with 1437 and a list:\n>\n> - one\n> - two" in text
    assert "> **Note**\n>\n> A plain note." in text
    assert "- An item with a nested warning:\n\n  > **Warning**\n  >\n  > Nested Kingma and Ba (2015)." in text
    assert "**PyTorch**\n\n`torch.optim.Adam`\n\n**course_lib**\n\n`course_lib.optim.Adam`" in text
    assert "<details>\n<summary><b>Answers</b></summary>\n\n> 1. The rate grows 8 times: $\\eta \\to 8\\eta$." in text
    assert text.rstrip().endswith("</details>")
    assert "- **LARS**: layer-wise adaptive rate scaling" in text


def test_math_stays_math_with_labels_as_tags_and_macros_written_out(converted):
    text, _ = converted
    assert "$\\theta \\in \\mathbb{R}^d$ and $\\lVert g \\rVert$ are math" in text
    assert ("$$\n\\hat\\eta = k\\eta, \\qquad\n\\begin{aligned} a &= b \\\\ c &= d \\end{aligned} \\tag{5.2}\n$$"
            in text)
    assert "\\begin{cases} x^2 & x > 0 \\\\ 0 & \\text{else} \\end{cases}" in text
    assert "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}" in text
    assert "$$\n\\lVert \\theta \\rVert \\in \\mathbb{R} \\tag{5.2}\n$$" in text     # {math} with :label:
    assert "$$\n\\begin{aligned}\nx &= 1 \\\\ y &= 2\n\\end{aligned}\n$$\n\n> **Backticks**" in text   # amsmath align
    assert "\\label" not in text and "(eq-lars)" not in text


def test_code_is_left_as_written(converted):
    text, _ = converted
    assert '```python\nx = "{glue:text}`n_train`"   # code stays as written\n```' in text
    assert "Inline code\n`{glue:text}` stays code, as does ``a `{cite:p}` b``" in text


def test_figures_become_attachments(converted):
    text, state = converted
    assert "![a curve](attachment:curve.png)\n\nThe loss curve." in text
    assert state.attachments["curve.png"] == {"image/png": base64.b64encode(PNG).decode()}


def test_unknown_constructs_fail_loudly():
    with pytest.raises(m.ConversionError, match="directive"):
        m.convert_markdown(":::{mystery}\nx\n:::", FakeBook())
    with pytest.raises(m.ConversionError, match="role"):
        m.convert_markdown("a {mystery}`x` b", FakeBook())
    with pytest.raises(m.ConversionError, match="glued"):
        m.convert_markdown("a {glue:text}`missing:.2f` b", FakeBook())


NOTEBOOK = """---
jupytext:
  formats: ipynb,md:myst
  text_representation: {extension: .md, format_name: myst, format_version: 0.13}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

# A lesson

Intro {cite:p}`kingma2015adam`.

```{code-cell} ipython3
:tags: [remove-cell]

# Colab: install course_lib (does nothing elsewhere)
import sys
```

```{code-cell} ipython3
x = 1
print(x)
```

```{code-cell} ipython3
:tags: [remove-cell]

glue("n_train", 1437)
claim(x > 0, "x should be positive", x=x)
claim(best[-1] == best[-2], f"the best rate should stop growing: {best}", best=best)
for name in ends:
    claim(ends[name] < 1, f"{name} should end low", ends=ends)
```

```{code-cell} ipython3
:tags: [remove-cell]

glue("lr_512", 0.4)
```

Uses {glue:text}`n_train` images.
"""


def test_a_notebook_keeps_its_code_strips_outputs_and_explains_hidden_checks(tmp_path):
    source = tmp_path / "lesson.md"
    source.write_text(NOTEBOOK)
    nb = jupytext.read(source)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells[2].execution_count = 3
    out = m.convert_notebook(nb, FakeBook(), note="> **From the build.**", references_title="Bibliography")
    nbformat.validate(out)
    assert "jupytext" not in out.metadata and out.metadata["kernelspec"]["name"] == "python3"
    code_in, code_out = [c for c in nb.cells if c.cell_type == "code"], [c for c in out.cells if c.cell_type == "code"]
    assert code_out[0].source == code_in[0].source                   # the Colab install cell, as it is
    assert code_out[1].source == code_in[1].source and code_out[1].outputs == [] and code_out[1].execution_count is None
    first, rest = code_out[2].source.split("\n", 1)
    assert rest == code_in[2].source
    assert first == ("# Checks 3 claims of the text above on this run (the book hides this cell): "
                     "x should be positive; the best rate should stop growing; {name} should end low")
    assert code_out[3].source.startswith("# Records numbers that the text above quotes (the book hides this cell).\n")
    assert [c.metadata.get("tags") for c in code_out] == [c.metadata.get("tags") for c in code_in]
    markdown = [c.source for c in out.cells if c.cell_type == "markdown"]
    assert markdown[0] == "# A lesson\n\n> **From the build.**\n\nIntro (Kingma and Ba, 2015)."
    assert markdown[1] == "Uses 1437 images."
    assert markdown[-1] == "## Bibliography\n\n- **Kingma and Ba, 2015.** Full entry of *kingma2015adam*."


def test_claim_comment_stays_one_line():
    source = "\n".join(f'claim(a{k} > 0, "claim number {k} about something rather long")' for k in range(9))
    comment = m.claim_comment(source)
    assert "\n" not in comment and len(comment) < 260 and comment.endswith("more")
    assert m.claim_comment("x = 1") is None


class StandIn(FakeBook):
    """Any value, citation or reference: for the real lessons, whose values only the build knows."""

    def glue(self, key):
        return {"text/plain": "0.5"}

    def cite(self, role, target):
        keys = [k.strip() for k in target.split(",")]
        return ("(Someone, 2020)" if role == "p" else "Someone (2020)"), keys

    def xref(self, role, target, title):
        return m.Link(title or target, BOOK + "somewhere.html")

    def read_file(self, path):
        return (ROOT / "lessons" / path).read_bytes()

    def bibliography(self, keys):
        return [("Someone, 2020", f"Entry {k}.") for k in keys]


SOURCES = [p for p in sorted(ROOT.glob("lessons/*.md")) + sorted(ROOT.glob("exercises/*.md"))
           if p.read_text().startswith("---\njupytext:")]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_lesson_and_exercise_converts_to_plain_markdown(source):
    nb = jupytext.read(source)
    out = m.convert_notebook(nb, StandIn(), note="> note")   # raises if raw MyST is left
    assert [c.source for c in nb.cells if c.cell_type == "code"] == \
        [c.source.split("\n", 1)[1] if c.source.startswith(("# Checks", "# Records")) else c.source
         for c in out.cells if c.cell_type == "code"]
