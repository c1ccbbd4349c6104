"""The language-model corpus: documents from an offline source or an optional online one.

The default corpus is Python source code that every machine running this course already
has on disk: the standard library (``sysconfig.get_paths()["stdlib"]``) and the installed source
of the course's own required packages (torch, numpy, scipy, scikit-learn, matplotlib), about
90 MB of text: code, comments and docstrings, in English. Each ``.py`` file is one document;
test directories are left out. Why not something else: scikit-learn's text sets
(20 newsgroups) are downloads, ``/usr/share/dict`` and licence files are missing or tiny on many
machines, and a generated corpus has no natural language in it. The price: the corpus depends
on the installed Python and package versions, so :func:`prepare_corpus` records them in the
shard metadata, and runs compare fairly on one machine (one corpus), not across machines.

Online sources (a FineWeb sample through ``datasets``, GPT-2's BPE through ``tiktoken``) are
optional and used only when asked for; both packages are imported inside the functions that
need them, and a missing package or an unreachable server raises
:class:`SourceUnavailableError` saying what to do.

"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sysconfig
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["Document", "PYTHON_SOURCE_PACKAGES", "SourceUnavailableError", "fineweb_documents",
           "python_source_documents", "split_documents"]

PYTHON_SOURCE_PACKAGES: tuple[str, ...] = ("stdlib", "torch", "numpy", "scipy", "sklearn",
                                           "matplotlib")


_SKIP_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "test", "tests",
                        "idle_test"})


Document = tuple[str, str]  # (name, text)


class SourceUnavailableError(RuntimeError):
    """An optional online source or package could not be used; the message says what to do."""


def _package_dir(package: str) -> Path:
    if package == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"packages: {package!r} is not an installed package")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(package: str) -> str:
    if package == "stdlib":
        return platform.python_version()
    dist = {"sklearn": "scikit-learn"}.get(package, package)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def python_source_documents(packages: Sequence[str] = PYTHON_SOURCE_PACKAGES, *,
                            max_bytes: int | None = None) -> list[Document]:
    """The ``.py`` files of the standard library and of installed packages, as documents.

    ``packages`` names import packages, or ``"stdlib"``; each is walked in sorted order, test
    directories skipped, so the list is deterministic for a given installation. Documents are
    named ``"<package>/<relative path>"``. ``max_bytes`` stops once that many bytes (UTF-8) are
    collected, for quick runs.
    """
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be None or >= 1, got {max_bytes!r}")
    docs: list[Document] = []
    total = 0
    for package in packages:
        root = _package_dir(package)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for filename in sorted(f for f in filenames if f.endswith(".py")):
                path = Path(dirpath) / filename
                raw = path.read_bytes()
                if not raw.strip():
                    continue
                docs.append((f"{package}/{path.relative_to(root).as_posix()}",
                             raw.decode("utf-8", errors="replace")))
                total += len(raw)
                if max_bytes is not None and total >= max_bytes:
                    return docs
    return docs


def fineweb_documents(max_bytes: int, *, name: str = "sample-10BT") -> list[Document]:
    """Stream documents of FineWeb (``HuggingFaceFW/fineweb``) until ``max_bytes`` is reached.

    Needs the ``datasets`` package and access to huggingface.co.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
    try:
        import datasets
    except ImportError as err:
        raise SourceUnavailableError(
            "FineWeb needs the 'datasets' package, which is not installed. Install it "
            "(pip install datasets) on a machine with internet access, or use the offline "
            "corpus: prepare_corpus(..., source='python')."
        ) from err
    docs: list[Document] = []
    total = 0
    try:
        stream = datasets.load_dataset("HuggingFaceFW/fineweb", name=name, split="train",
                                       streaming=True)
        for i, row in enumerate(stream):
            docs.append((f"fineweb/{i}", row["text"]))
            total += len(row["text"].encode("utf-8"))
            if total >= max_bytes:
                break
    except Exception as err:  # the hub's client raises many kinds of network errors
        raise SourceUnavailableError(
            f"Could not stream HuggingFaceFW/fineweb ({name}) from huggingface.co: {err!r}. "
            "Check the network (or HF_ENDPOINT / HF_DATASETS_OFFLINE with a local cache), or use "
            "the offline corpus: prepare_corpus(..., source='python')."
        ) from err
    return docs


def _doc_key(name: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_documents(docs: Sequence[Document], val_fraction: float = 0.05, *,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Split whole documents into (train, val); val gets about ``val_fraction`` of the bytes.

    Documents are ordered by a hash of ``(seed, name)`` and taken into validation until it
    holds ``val_fraction`` of all bytes, so the split depends on names, not on list order.
    Both parts keep the input order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if len(docs) < 2:
        raise ValueError(f"docs must hold at least 2 documents to split, got {len(docs)}")
    sizes = [len(text.encode("utf-8")) for _, text in docs]
    target = val_fraction * sum(sizes)
    val_idx: set[int] = set()
    val_bytes = 0
    for i in sorted(range(len(docs)), key=lambda i: _doc_key(docs[i][0], seed)):
        if val_bytes >= target or len(val_idx) == len(docs) - 1:
            break
        val_idx.add(i)
        val_bytes += sizes[i]
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val
