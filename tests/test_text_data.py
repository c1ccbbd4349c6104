"""Tests of course_lib.data.shards: corpus, BPE tokenizer, shards, batches, optional online sources."""

from __future__ import annotations

import json
import os
import random
import sys
import types
from collections import Counter

import numpy as np
import pytest
import torch

from course_lib.data.corpus import SourceUnavailableError, fineweb_documents, python_source_documents, split_documents
from course_lib.data.shards import EvalBatches, TokenBatches, get_batch, load_split, prepare_corpus, write_shards
from course_lib.data.tokenizer import _PRETOKENIZE, EOT, BPETokenizer, TiktokenTokenizer, load_tokenizer

TRICKY = [
    "def f(x_1, _y):\n    return x_1 + 1234567  # café\n\n\tß ≠ ∑ 🙂\r\n",
    "  leading spaces,   runs\t\tof  whitespace  \n\n\n",
    "don't it's we'll they've I'm 3.14e-10 __dunder__ a_b_c",
    "",
]


@pytest.fixture(scope="module")
def small_corpus() -> list[tuple[str, str]]:
    return python_source_documents(["stdlib"], max_bytes=30_000)


def naive_bpe(texts: list[str], vocab_size: int) -> list[tuple[int, int]]:
    """BPE the slow way: recount every pair of every word before each merge."""
    freq = Counter(w for t in texts for w in _PRETOKENIZE.findall(t))
    seqs = {w: list(w.encode("utf-8")) for w in freq}
    merges: list[tuple[int, int]] = []
    while len(merges) < vocab_size - 257:
        counts: Counter[tuple[int, int]] = Counter()
        for w, f in freq.items():
            for pair in zip(seqs[w], seqs[w][1:]):
                counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        new_id = 257 + len(merges)
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if s[i:i + 2] == list(best):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def test_pretokenizer_pieces_rebuild_any_text():
    rng = random.Random(0)
    alphabet = "ab_Z9 \t\n.,'é∑🙂\u0301-"
    texts = TRICKY + ["".join(rng.choice(alphabet) for _ in range(200)) for _ in range(20)]
    for text in texts:
        assert "".join(_PRETOKENIZE.findall(text)) == text


def test_bpe_training_matches_a_naive_implementation(small_corpus):
    texts = [t for _, t in small_corpus]
    tok = BPETokenizer.train(texts, 320)
    assert tok.merges == naive_bpe(texts, 320)
    assert tok.vocab_size == 320


def test_bpe_round_trips_and_compresses(small_corpus):
    texts = [t for _, t in small_corpus]
    tok = BPETokenizer.train(texts, 400)
    for text in texts + TRICKY:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size and i != tok.eot_id for i in ids)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert n_bytes / sum(len(tok.encode(t)) for t in texts) > 1.8
    assert tok.decode([tok.eot_id]) == EOT
    with pytest.raises(ValueError, match="ids"):
        tok.decode([tok.vocab_size])


def test_zero_merges_is_a_byte_tokenizer_and_spec_round_trips(small_corpus):
    byte_tok = BPETokenizer.train(["abc"], 257)
    assert byte_tok.encode("hé") == list("hé".encode())
    tok = BPETokenizer.train([t for _, t in small_corpus], 300)
    again = load_tokenizer(json.loads(json.dumps(tok.spec())))
    assert again.merges == tok.merges
    assert again.encode(TRICKY[0]) == tok.encode(TRICKY[0])


@pytest.mark.parametrize("bad", [256, 70_000, 300.0])
def test_bad_vocab_size_is_rejected(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["abc"], bad)


def test_merges_must_refer_to_earlier_ids():
    with pytest.raises(ValueError, match="merges"):
        BPETokenizer([(97, 300)])


def test_python_source_documents_are_deterministic_and_skip_tests(small_corpus):
    assert small_corpus == python_source_documents(["stdlib"], max_bytes=30_000)
    names = [name for name, _ in small_corpus]
    assert names and all(name.startswith("stdlib/") and name.endswith(".py") for name in names)
    assert sum(len(t.encode()) for _, t in small_corpus) >= 30_000
    everything = python_source_documents(["stdlib"])
    assert not any("/test/" in name or "/tests/" in name for name, _ in everything)
    assert "stdlib/json/decoder.py" in {name for name, _ in everything}
    with pytest.raises(ValueError, match="packages"):
        python_source_documents(["no_such_package_here"])


def make_docs(n: int = 40) -> list[tuple[str, str]]:
    rng = random.Random(1)
    return [(f"doc{i:03d}", " ".join(rng.choice(["alpha", "beta", "gamma", "delta"])
                                     for _ in range(rng.randint(5, 60)))) for i in range(n)]


def test_split_takes_whole_documents_by_name():
    docs = make_docs()
    train, val = split_documents(docs, 0.2, seed=3)
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    size = lambda ds: sum(len(t) for _, t in ds)  # noqa: E731
    assert 0.2 * size(docs) <= size(val) < 0.2 * size(docs) + max(len(t) for _, t in docs)
    shuffled = docs[::-1]
    assert sorted(split_documents(shuffled, 0.2, seed=3)[1]) == sorted(val)
    assert sorted(split_documents(docs, 0.2, seed=4)[1]) != sorted(val)
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(docs, 1.0)


def test_shards_hold_each_document_followed_by_eot(tmp_path, small_corpus):
    tok = BPETokenizer.train([t for _, t in small_corpus], 300)
    docs = make_docs(6)
    meta = write_shards(tmp_path, {"train": docs[:4], "val": docs[4:]}, tok, info={"x": 1})
    train = load_split(tmp_path, "train")
    assert train.dtype == np.uint16 and len(train) == meta["splits"]["train"]["tokens"]
    pieces = tok.decode(train.tolist()).split(EOT)
    assert pieces == [t for _, t in docs[:4]] + [""]
    assert meta["splits"]["val"]["documents"] == 2 and meta["info"] == {"x": 1}
    assert load_tokenizer(tmp_path).merges == tok.merges
    with pytest.raises(ValueError, match="split"):
        load_split(tmp_path, "test")
    too_big = types.SimpleNamespace(vocab_size=70_000, eot_id=0)
    with pytest.raises(ValueError, match="vocab_size"):
        write_shards(tmp_path / "big", {"train": docs}, too_big)


def test_prepare_corpus_builds_once_and_rebuilds_on_new_settings(tmp_path):
    meta = prepare_corpus(tmp_path, max_bytes=60_000, vocab_size=300, val_fraction=0.1)
    assert meta["vocab_size"] == 300 and meta["info"]["versions"]["stdlib"]
    val = meta["splits"]["val"]
    assert val["tokens"] > 0 and val["bytes"] >= 0.1 * (val["bytes"] + meta["splits"]["train"]["bytes"])
    stamp = os.stat(tmp_path / "train.bin").st_mtime_ns
    assert prepare_corpus(tmp_path, max_bytes=60_000, vocab_size=300, val_fraction=0.1) == meta
    assert os.stat(tmp_path / "train.bin").st_mtime_ns == stamp
    rebuilt = prepare_corpus(tmp_path, max_bytes=60_000, vocab_size=280, val_fraction=0.1)
    assert rebuilt["vocab_size"] == 280
    with pytest.raises(ValueError, match="source"):
        prepare_corpus(tmp_path, source="web")


def test_batches_are_a_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 16, seed=0, step=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))  # contiguous
    assert torch.equal(get_batch(tokens, 4, 16, seed=0, step=3)[0], x)
    assert not torch.equal(get_batch(tokens, 4, 16, seed=0, step=4)[0], x)
    assert not torch.equal(get_batch(tokens, 4, 16, seed=1, step=3)[0], x)


def test_every_window_start_is_reachable():
    tokens = np.arange(10, dtype=np.uint16)  # seq_len 8: windows start at 0 or 1
    starts = {int(get_batch(tokens, 1, 8, seed=0, step=s)[0][0, 0]) for s in range(64)}
    assert starts == {0, 1}


def test_token_batches_resume_where_they_stopped(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    batches = TokenBatches(tokens, 3, 20, seed=5)
    stream = batches.batches(0)
    seen = [next(stream) for _ in range(6)]
    resumed = next(TokenBatches(tokens, 3, 20, seed=5).batches(0, start=4))
    assert torch.equal(resumed[0], seen[4][0]) and torch.equal(resumed[1], seen[4][1])
    assert torch.equal(batches[2][0], seen[2][0])
    with pytest.raises(ValueError, match="epoch"):
        next(batches.batches(1))


def test_eval_batches_cover_consecutive_windows_every_pass():
    tokens = np.arange(105, dtype=np.uint16)
    batches = EvalBatches(tokens, 4, 10)  # windows start at 0, 10, ..., 90: 10 windows
    assert len(batches) == 3
    xs = [x for x, _ in batches]
    assert [x.shape[0] for x in xs] == [4, 4, 2]
    assert torch.equal(torch.cat(xs)[:, 0], torch.arange(0, 100, 10))
    assert all(torch.equal(a, b) for a, b in zip(xs, (x for x, _ in batches)))
    assert len(EvalBatches(tokens, 4, 10, max_batches=2)) == 2
    with pytest.raises(ValueError, match="seq_len"):
        EvalBatches(tokens, 4, 105)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(tokens, 0, 10, seed=0, step=0)


def test_missing_datasets_package_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(SourceUnavailableError, match="pip install datasets"):
        fineweb_documents(1000)
    with pytest.raises(SourceUnavailableError, match="source='python'"):
        prepare_corpus(tmp_path, source="fineweb", max_bytes=1000)


def test_unreachable_hub_gives_a_clear_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(SourceUnavailableError, match="huggingface.co") as info:
        fineweb_documents(1000)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_tiktoken_errors_name_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(SourceUnavailableError, match="pip install tiktoken"):
        TiktokenTokenizer("gpt2")

    def get_encoding(name):
        raise OSError("connection refused")

    monkeypatch.setitem(sys.modules, "tiktoken", types.SimpleNamespace(get_encoding=get_encoding))
    with pytest.raises(SourceUnavailableError, match="openaipublic"):
        TiktokenTokenizer("gpt2")
