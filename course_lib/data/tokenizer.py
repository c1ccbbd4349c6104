"""Tokenizers: a byte-level BPE trained offline, and GPT-2's through tiktoken (optional).

:class:`BPETokenizer` is a byte-level BPE (Sennrich et al. 2016, in the byte-level
form of GPT-2): ids 0-255 are the bytes, 256 is the end-of-text separator, and each learned merge
adds one id. Every string round-trips exactly, no download is needed, and 4096 ids trained on a
few MB take seconds. Python's ``re`` has no ``\\p{L}``, so the pre-tokenizer that cuts text into
words before merging is a small pattern of this module's own (letters and ``_`` with an optional
leading space, digits in threes, punctuation runs, whitespace runs).
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from .corpus import SourceUnavailableError

__all__ = ["EOT", "MAX_VOCAB", "BPETokenizer", "TiktokenTokenizer", "Tokenizer", "load_tokenizer"]

EOT = "<|endoftext|>"
MAX_VOCAB = 2**16  # token ids are stored as np.uint16 in the shards


# A word is letters/underscores (with one leading space), up to three digits, a punctuation run
# (with one leading space), or whitespace; `\s+(?!\S)` leaves the last space of a run to the
# word that follows. Every character falls into one branch, so the pieces rebuild the text.
_PRETOKENIZE = re.compile(r" ?[^\W\d]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+")


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
        if not isinstance(vocab_size, int) or not 257 <= vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size must be an integer in [257, {MAX_VOCAB}], "
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
