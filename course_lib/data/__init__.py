"""Data for the lessons and the capstone, all of it available offline.

- :mod:`.digits`: scikit-learn's 8x8 digits, split and scaled (:func:`load_digits`);
- :mod:`.synthetic`: generated data for the recipes' stand-ins (:func:`sort_task`, :func:`ring_data`);
- :mod:`.batching`: the :class:`Batches` protocol that resumable training data follows,
  :class:`SeededBatches`, :func:`epoch_batches` and plain index batches (:func:`batches`);
- :mod:`.corpus`, :mod:`.tokenizer`, :mod:`.shards`: the language-model pipeline of the capstone,
  from documents to a tokenizer to token shards and batches of windows.
"""

from .batching import Batches, SeededBatches, batches, epoch_batches
from .digits import Split, load_digits
from .synthetic import ring_data, sort_task

__all__ = ["Batches", "SeededBatches", "Split", "batches", "epoch_batches", "load_digits", "ring_data", "sort_task"]
