"""Language-model data: an offline corpus, a byte-level BPE tokenizer, token shards, batches.

Corpus. The default corpus is Python source code that every machine running this course already
has on disk: the standard library (``sysconfig.get_paths()["stdlib"]``) and the installed source
of the course's own required packages (torch, numpy, scipy, scikit-learn, matplotlib), about
90 MB of text: code, comments and docstrings, in English. Each ``.py`` file is one document;
test directories are left out. Why not something else: scikit-learn's text sets
(20 newsgroups) are downloads, ``/usr/share/dict`` and licence files are missing or tiny on many
machines, and a generated corpus has no natural language in it. The price: the corpus depends
on the installed Python and package versions, so :func:`prepare_corpus` records them in the
shard metadata, and runs compare fairly on one machine (one corpus), not across machines.

Tokenizer. :class:`BPETokenizer` is a byte-level BPE (Sennrich et al. 2016, in the byte-level
form of GPT-2): ids 0-255 are the bytes, 256 is the end-of-text separator, and each learned merge
adds one id. Every string round-trips exactly, no download is needed, and 4096 ids trained on a
few MB take seconds. Python's ``re`` has no ``\\p{L}``, so the pre-tokenizer that cuts text into
words before merging is a small pattern of this module's own (letters and ``_`` with an optional
leading space, digits in threes, punctuation runs, whitespace runs).

Shards. ``train.bin`` and ``val.bin`` hold ``np.uint16`` token ids (a separator after each
document) and ``meta.json`` says what they are. Validation takes whole documents, never a slice
of one, so no file is partly seen in training.

Batches. :func:`get_batch` is a pure function of ``(seed, step)``: resuming at step ``s``
yields the same batches as a run that never stopped.

Online sources (a FineWeb sample through ``datasets``, GPT-2's BPE through ``tiktoken``) are
optional and used only when asked for; both packages are imported inside the functions that
need them, and a missing package or an unreachable server raises
:class:`SourceUnavailableError` saying what to do.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib.util
import json
import math
import os
import platform
import re
import sysconfig
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "EOT",
    "PYTHON_SOURCE_PACKAGES",
    "BPETokenizer",
    "EvalBatches",
    "SourceUnavailableError",
    "TiktokenTokenizer",
    "TokenBatches",
    "fineweb_documents",
    "get_batch",
    "load_split",
    "load_tokenizer",
    "prepare_corpus",
    "python_source_documents",
    "split_documents",
    "write_shards",
]

EOT = "<|endoftext|>"
PYTHON_SOURCE_PACKAGES: tuple[str, ...] = ("stdlib", "torch", "numpy", "scipy", "sklearn",
                                           "matplotlib")
_SKIP_DIRS = frozenset({"__pycache__", "site-packages", "dist-packages", "test", "tests",
                        "idle_test"})
# A word is letters/underscores (with one leading space), up to three digits, a punctuation run
# (with one leading space), or whitespace; `\s+(?!\S)` leaves the last space of a run to the
# word that follows. Every character falls into one branch, so the pieces rebuild the text.
_PRETOKENIZE = re.compile(r" ?[^\W\d]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+")
_MAX_SHARD_VOCAB = 2**16

Document = tuple[str, str]  # (name, text)


class SourceUnavailableError(RuntimeError):
    """An optional online source or package could not be used; the message says what to do."""


# ----------------------------------------------------------------------------- corpus


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


# ----------------------------------------------------------------------------- tokenizers


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each non-overlapping occurrence of ``pair`` (left to right) by ``new_id``."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level BPE: ids 0-255 are bytes, 256 is ``EOT``, id ``257 + r`` is merge ``r``."""

    eot_id = 256

    def __init__(self, merges: Sequence[tuple[int, int]]) -> None:
        self.merges = [(int(a), int(b)) for a, b in merges]
        self._bytes = [bytes([i]) for i in range(256)] + [EOT.encode()]
        self._ranks: dict[tuple[int, int], int] = {}
        for rank, (a, b) in enumerate(self.merges):
            known = 257 + rank
            if not (0 <= a < known and 0 <= b < known and self.eot_id not in (a, b)):
                raise ValueError(f"merges[{rank}] = {(a, b)} must join two earlier non-EOT ids")
            self._ranks[(a, b)] = rank
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return 257 + len(self.merges)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn ``vocab_size - 257`` merges, each time joining the most frequent adjacent pair.

        Words (see the module docstring) are counted once with their frequency; pair counts are
        updated only for the words a merge touches, and a heap with lazy deletion finds the
        most frequent pair (ties: the smallest pair), so training is deterministic and fast.
        """
        if not isinstance(vocab_size, int) or not 257 <= vocab_size <= _MAX_SHARD_VOCAB:
            raise ValueError(f"vocab_size must be an integer in [257, {_MAX_SHARD_VOCAB}], "
                             f"got {vocab_size!r}")
        word_counts: Counter[str] = Counter()
        for text in texts:
            word_counts.update(_PRETOKENIZE.findall(text))
        words = [list(w.encode("utf-8")) for w in word_counts]
        freqs = list(word_counts.values())
        pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for i, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where[pair].add(i)
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - 257 and heap:
            neg_count, pair = heapq.heappop(heap)
            count = pair_counts.get(pair, 0)
            if count <= 0:
                continue
            if -neg_count != count:  # stale entry: put back with the current count
                heapq.heappush(heap, (-count, pair))
                continue
            new_id = 257 + len(merges)
            merges.append(pair)
            grown: set[tuple[int, int]] = set()
            for i in where.pop(pair):
                word, freq = words[i], freqs[i]
                merged = _merge(word, pair, new_id)
                if len(merged) == len(word):  # merged away already by an earlier merge
                    continue
                for old in zip(word, word[1:]):
                    pair_counts[old] -= freq
                for new in zip(merged, merged[1:]):
                    pair_counts[new] += freq
                    where[new].add(i)
                    grown.add(new)
                words[i] = merged
            del pair_counts[pair]
            for new in grown:
                heapq.heappush(heap, (-pair_counts[new], new))
        return cls(merges)

    def _encode_word(self, word: str) -> list[int]:
        ids = list(word.encode("utf-8"))
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, len(self._ranks)))
            if best not in self._ranks:
                break
            ids = _merge(ids, best, 257 + self._ranks[best])
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (``EOT`` is never produced; separators are added by shards)."""
        ids: list[int] = []
        cache = self._cache
        if len(cache) > 1_000_000:
            cache.clear()
        for word in _PRETOKENIZE.findall(text):
            piece = cache.get(word)
            if piece is None:
                piece = cache[word] = self._encode_word(word)
            ids.extend(piece)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; a cut inside a UTF-8 character shows as U+FFFD."""
        table = self._bytes
        try:
            raw = b"".join(table[i] for i in ids)
        except IndexError as err:
            raise ValueError(f"ids must lie in [0, {self.vocab_size}), got {err}") from err
        return raw.decode("utf-8", errors="replace")

    def spec(self) -> dict:
        """A JSON-ready description from which :func:`load_tokenizer` rebuilds the tokenizer."""
        return {"kind": "bpe", "merges": [list(m) for m in self.merges]}


class TiktokenTokenizer:
    """An encoding of the ``tiktoken`` package (``"gpt2"``: 50257 ids, ``<|endoftext|>`` 50256).

    tiktoken downloads the encoding's files on first use and caches them (``TIKTOKEN_CACHE_DIR``).
    """

    def __init__(self, name: str = "gpt2") -> None:
        try:
            import tiktoken
        except ImportError as err:
            raise SourceUnavailableError(
                f"The {name!r} tokenizer needs the 'tiktoken' package, which is not installed. "
                "Install it (pip install tiktoken), or use the offline tokenizer: "
                "prepare_corpus(..., tokenizer='bpe')."
            ) from err
        try:
            self._enc = tiktoken.get_encoding(name)
        except Exception as err:  # tiktoken fetches its files over HTTP on first use
            raise SourceUnavailableError(
                f"tiktoken could not load the {name!r} encoding: {err!r}. On first use it "
                "downloads files from openaipublic.blob.core.windows.net; run once with network "
                "access (set TIKTOKEN_CACHE_DIR to keep the files), or use the offline "
                "tokenizer: prepare_corpus(..., tokenizer='bpe')."
            ) from err
        self.name = name
        self.eot_id: int = self._enc.eot_token
        self.vocab_size: int = self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))

    def spec(self) -> dict:
        return {"kind": "tiktoken", "name": self.name}


Tokenizer = BPETokenizer | TiktokenTokenizer


def load_tokenizer(source: dict | str | Path) -> Tokenizer:
    """Rebuild a tokenizer from its ``spec()`` or from a shard directory's ``tokenizer.json``."""
    spec = source if isinstance(source, dict) else json.loads(
        (Path(source) / "tokenizer.json").read_text())
    if spec.get("kind") == "bpe":
        return BPETokenizer([tuple(m) for m in spec["merges"]])
    if spec.get("kind") == "tiktoken":
        return TiktokenTokenizer(spec["name"])
    raise ValueError(f"source: unknown tokenizer kind {spec.get('kind')!r} (bpe or tiktoken)")


# ----------------------------------------------------------------------------- shards


def write_shards(out_dir: str | Path, splits: dict[str, Sequence[Document]],
                 tokenizer: Tokenizer, *, info: dict | None = None) -> dict:
    """Tokenize each split into ``<split>.bin`` (uint16, ``EOT`` after each document).

    Writes ``tokenizer.json`` and ``meta.json`` (token and document counts, ``info``) and
    returns the metadata.
    """
    if tokenizer.vocab_size > _MAX_SHARD_VOCAB:
        raise ValueError(f"tokenizer.vocab_size must be <= {_MAX_SHARD_VOCAB} for uint16 "
                         f"shards, got {tokenizer.vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict = {"format": "course_lib.text/1", "dtype": "uint16",
                  "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
                  "info": info or {}, "splits": {}}
    for split, docs in splits.items():
        n_tokens = 0
        with open(out / f"{split}.bin", "wb") as f:
            for _, text in docs:
                ids = tokenizer.encode(text)
                ids.append(tokenizer.eot_id)
                f.write(np.asarray(ids, dtype=np.uint16).tobytes())
                n_tokens += len(ids)
        meta["splits"][split] = {"file": f"{split}.bin", "tokens": n_tokens,
                                 "documents": len(docs),
                                 "bytes": sum(len(t.encode("utf-8")) for _, t in docs)}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer.spec()))
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_split(out_dir: str | Path, split: str = "train") -> np.memmap:
    """The token ids of one split as a read-only ``np.uint16`` memmap."""
    meta = json.loads((Path(out_dir) / "meta.json").read_text())
    if split not in meta["splits"]:
        raise ValueError(f"split must be one of {sorted(meta['splits'])}, got {split!r}")
    return np.memmap(Path(out_dir) / meta["splits"][split]["file"], dtype=np.uint16, mode="r")


def prepare_corpus(out_dir: str | Path, *, source: str = "python", tokenizer: str = "bpe",
                   vocab_size: int = 4096, max_bytes: int | None = None,
                   val_fraction: float = 0.05, seed: int = 0,
                   bpe_sample_bytes: int = 4_000_000) -> dict:
    """Build (or reuse) the token shards of a corpus in ``out_dir``; returns ``meta.json``.

    ``source``: ``"python"`` (offline, see the module docstring) or ``"fineweb"`` (online,
    ``max_bytes`` defaults to 200 MB there). ``tokenizer``: ``"bpe"`` (trained on at most
    ``bpe_sample_bytes`` of training documents, picked by seeded hash so that every package is
    represented) or ``"gpt2"`` (tiktoken, online). If ``out_dir`` already holds shards built with
    the same arguments they are reused.
    """
    if source not in ("python", "fineweb"):
        raise ValueError(f"source must be 'python' or 'fineweb', got {source!r}")
    if tokenizer not in ("bpe", "gpt2"):
        raise ValueError(f"tokenizer must be 'bpe' or 'gpt2', got {tokenizer!r}")
    settings = {"source": source, "tokenizer": tokenizer, "max_bytes": max_bytes,
                "val_fraction": val_fraction, "seed": seed}
    if tokenizer == "bpe":
        settings.update(vocab_size=vocab_size, bpe_sample_bytes=bpe_sample_bytes)
    out = Path(out_dir)
    if (out / "meta.json").exists():
        meta = json.loads((out / "meta.json").read_text())
        files_exist = all((out / s["file"]).exists() for s in meta["splits"].values())
        if meta["info"].get("settings") == settings and files_exist:
            return meta
    if source == "python":
        docs = python_source_documents(max_bytes=max_bytes)
        versions = {p: _package_version(p) for p in PYTHON_SOURCE_PACKAGES}
    else:
        docs = fineweb_documents(200_000_000 if max_bytes is None else max_bytes)
        versions = {"datasets": _package_version("datasets")}
    train, val = split_documents(docs, val_fraction, seed=seed)
    if tokenizer == "bpe":
        sample, size = [], 0
        for _, text in sorted(train, key=lambda d: _doc_key(d[0], seed)):
            if size >= bpe_sample_bytes:
                break
            sample.append(text)
            size += len(text.encode("utf-8"))
        tok: Tokenizer = BPETokenizer.train(sample, vocab_size)
    else:
        tok = TiktokenTokenizer("gpt2")
    info = {"settings": settings, "versions": versions}
    return write_shards(out, {"train": train, "val": val}, tok, info=info)


# ----------------------------------------------------------------------------- batches


def _check_windows(tokens: np.ndarray, batch_size: int, seq_len: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(seq_len, int) or not 1 <= seq_len < len(tokens):
        raise ValueError(f"seq_len must be an integer in [1, {len(tokens) - 1}] for "
                         f"{len(tokens)} tokens, got {seq_len!r}")


def _to_tensors(windows: np.ndarray, device: torch.device | str | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.from_numpy(windows.astype(np.int64))
    x, y = data[:, :-1], data[:, 1:]
    if device is not None and torch.device(device).type == "cuda":
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


def get_batch(tokens: np.ndarray, batch_size: int, seq_len: int, *, seed: int, step: int,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``x`` and next-token targets ``y`` (both ``(batch_size, seq_len)`` int64).

    Window starts are drawn uniformly from ``np.random.default_rng([seed, step])``: the batch is
    a function of ``(seed, step)`` alone. A window may span a document separator, as in GPT-2's
    pretraining.
    """
    _check_windows(tokens, batch_size, seq_len)
    if not all(isinstance(v, (int, np.integer)) and v >= 0 for v in (seed, step)):
        raise ValueError(f"seed and step must be integers >= 0, got seed={seed!r}, step={step!r}")
    starts = np.random.default_rng([seed, step]).integers(0, len(tokens) - seq_len,
                                                          size=batch_size)
    windows = np.stack([tokens[s:s + seq_len + 1] for s in starts])
    return _to_tensors(windows, device)


class TokenBatches:
    """Training batches of one token array: ``batches[step]`` is ``get_batch(..., step=step)``.

    ``batches(epoch, start)`` is the interface of :class:`course_lib.trainer.Trainer`: it yields
    batch ``start``, ``start + 1``, ... without end (one endless epoch, so train with
    ``max_steps``), and a resumed run continues with exactly the batches it would have seen.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, *, seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        _check_windows(tokens, batch_size, seq_len)
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.device = seed, device

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.tokens, self.batch_size, self.seq_len, seed=self.seed, step=step,
                         device=self.device)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if epoch != 0:
            raise ValueError(f"epoch must be 0 (the batches form one endless epoch), got {epoch!r}")
        step = start
        while True:
            yield self[step]
            step += 1


class EvalBatches:
    """Consecutive non-overlapping windows from the start of ``tokens``, in batches; re-iterable.

    The same tokens every pass, so validation losses of different runs compare directly. The
    last batch may be smaller; a tail shorter than ``seq_len + 1`` tokens is left out, and
    ``max_batches`` keeps only the first batches.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, *,
                 max_batches: int | None = None,
                 device: torch.device | str | None = None) -> None:
        _check_windows(tokens, batch_size, seq_len)
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
            raise ValueError(f"max_batches must be None or an integer >= 1, got {max_batches!r}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.starts = range(0, len(tokens) - seq_len, seq_len)
        n_batches = math.ceil(len(self.starts) / batch_size)
        self.n_batches = n_batches if max_batches is None else min(n_batches, max_batches)
        self.device = device

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(self.n_batches):
            starts = self.starts[b * self.batch_size:(b + 1) * self.batch_size]
            windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts])
            yield _to_tensors(windows, self.device)
