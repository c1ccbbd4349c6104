"""Token shards on disk, and batches of token windows drawn from them.

``train.bin`` and ``val.bin`` hold ``np.uint16`` token ids (a separator after each
document) and ``meta.json`` says what they are. Validation takes whole documents, never a slice
of one, so no file is partly seen in training.

:func:`get_batch` is a pure function of ``(seed, step)``: resuming at step ``s``
yields the same batches as a run that never stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .corpus import (PYTHON_SOURCE_PACKAGES, Document, _doc_key, _package_version, fineweb_documents,
                     python_source_documents, split_documents)
from .tokenizer import MAX_VOCAB, BPETokenizer, TiktokenTokenizer, Tokenizer

__all__ = ["EvalBatches", "TokenBatches", "get_batch", "load_split", "prepare_corpus", "write_shards"]

def write_shards(out_dir: str | Path, splits: dict[str, Sequence[Document]],
                 tokenizer: Tokenizer, *, info: dict | None = None) -> dict:
    """Tokenize each split into ``<split>.bin`` (uint16, ``EOT`` after each document).

    Writes ``tokenizer.json`` and ``meta.json`` (token and document counts, ``info``) and
    returns the metadata.
    """
    if tokenizer.vocab_size > MAX_VOCAB:
        raise ValueError(f"tokenizer.vocab_size must be <= {MAX_VOCAB} for uint16 "
                         f"shards, got {tokenizer.vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict = {"format": "course_lib.data.shards/1", "dtype": "uint16",
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

    ``batches(epoch, start)`` is the interface of :class:`course_lib.train.trainer.Trainer`: it yields
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
