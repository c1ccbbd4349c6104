"""Launch buttons only on pages that have a notebook to launch.

sphinx-book-theme gives every executed page a launch button (Colab, Binder). For a MyST page without
an ``.ipynb`` twin in the repository (the status page, the exercises page) the button would open the
``.md`` source, which Colab cannot run. This extension runs after the theme has added its buttons and
removes the launch group from such pages; lessons and exercises keep theirs.
"""

from __future__ import annotations

from pathlib import Path


def drop_launch_without_notebook(app, pagename, templatename, context, doctree):
    buttons = context.get("header_buttons")
    if not buttons:
        return
    source = Path(app.env.doc2path(pagename))
    if source.suffix == ".ipynb" or source.with_suffix(".ipynb").exists():
        return
    context["header_buttons"] = [b for b in buttons if b.get("label") != "launch-buttons"]


def setup(app):
    # The theme adds its launch buttons at priority 501; this runs after it.
    app.connect("html-page-context", drop_launch_without_notebook, priority=600)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
