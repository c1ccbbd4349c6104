"""Execute the book's notebooks in parallel before Sphinx reads them.

With ``execute_notebooks: cache``, myst-nb runs each page's notebook when Sphinx reads the page, one
after the other. This extension runs first (``env-before-read-docs``): it reads every notebook page
that Sphinx is about to read with myst-nb's own reader, executes those the jupyter-cache does not
hold yet in a pool of worker processes, and stores the results in that cache exactly as myst-nb
would. myst-nb then finds each of them there. A notebook that fails is not stored: myst-nb runs it
again itself and reports the error in its usual way, so a failure reads the same as without this
extension.

Workers: ``BOOK_EXECUTION_WORKERS`` (default: the number of CPUs). ``1`` leaves execution to myst-nb.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _execute(nb_json: str, cwd: str, timeout: int, allow_errors: bool) -> tuple[str | None, float, str | None]:
    """Run in a worker process: the executed notebook as JSON (None on failure), seconds, error."""
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.reads(nb_json, as_version=4)
    result = single_nb_execution(nb, cwd=cwd, timeout=timeout, allow_errors=allow_errors, meta_override=True)
    if result.err is not None:
        first_line = (str(result.err).strip().splitlines() or [""])[0]
        return None, result.time, f"{type(result.err).__name__}: {first_line}"
    return nbformat.writes(nb), result.time, None


def _workers() -> int:
    value = os.environ.get("BOOK_EXECUTION_WORKERS", "")
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"BOOK_EXECUTION_WORKERS must be a positive integer, got {value!r}")
    return int(value)


def execute_in_parallel(app, env, docnames) -> None:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from myst_nb.core.read import create_nb_reader

    nb_config = env.mystnb_config
    workers = _workers()
    if nb_config.execution_mode != "cache" or workers < 2:
        return
    cache = get_cache(nb_config.execution_cache_path or ".jupyter_cache")
    todo = []
    for docname in sorted(docnames):
        path = Path(env.doc2path(docname))
        if any(path.match(pattern) for pattern in nb_config.execution_excludepatterns):
            continue
        text = path.read_text(encoding="utf8")
        reader = create_nb_reader(str(path), env.myst_config, nb_config, text)
        if reader is None:
            continue
        notebook = reader.read(text)
        if not any(cell.cell_type == "code" for cell in notebook.cells):
            continue
        try:
            cache.match_cache_notebook(notebook)
            continue  # already executed with this code
        except KeyError:
            todo.append((path, notebook, reader.read_fmt))
    if len(todo) < 2:
        return  # nothing to gain: myst-nb executes it as usual

    logger.info(f"[parallel_execution] executing {len(todo)} notebooks with {min(workers, len(todo))} workers")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
        futures = [
            (path, read_fmt, pool.submit(_execute, nbformat.writes(notebook), str(path.parent.resolve()),
                                         nb_config.execution_timeout, nb_config.execution_allow_errors))
            for path, notebook, read_fmt in todo
        ]
        for path, read_fmt, future in futures:
            nb_json, seconds, error = future.result()
            if error is not None:
                logger.info(f"[parallel_execution] {path} failed ({error}); myst-nb will run and report it")
                continue
            record = cache.add_nb_to_project(str(path), read_data=read_fmt) if read_fmt else cache.add_nb_to_project(str(path))
            cache.cache_notebook_bundle(
                CacheBundleIn(nbformat.reads(nb_json, as_version=4), record.uri, data={"execution_seconds": seconds}),
                check_validity=False, overwrite=True,
            )
            logger.info(f"[parallel_execution] {path}: {seconds:.1f} s")
    logger.info(f"[parallel_execution] done in {time.perf_counter() - start:.1f} s")


def setup(app):
    # A claim a lesson makes about its own run (course_lib.claims.claim) fails the build when it does not
    # hold; in a student's own run it only shows a note. The kernels inherit this process's environment.
    os.environ.setdefault("COURSE_CLAIMS", "strict")
    app.connect("env-before-read-docs", execute_in_parallel)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
