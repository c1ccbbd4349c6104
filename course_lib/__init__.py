"""course_lib: the tested library behind the course *How neural networks are optimized*.

Every lesson imports from here, and every lesson shows this library's own source.

Where things are (each module's docstring says more):

- ``optim/``: the optimizers, one file each holding its math; ``_base`` (bookkeeping every
  optimizer shares), ``_fast`` (how an update runs over many tensors), ``_compat`` (torch's flags
  and state dicts).
- ``schedules``, ``param_groups``: learning-rate schedules; which parameters decay or learn faster.
- ``data/``: digits, synthetic sets, the text corpus, tokenizer and token shards, one ``Batches``
  protocol. ``models/``: MLPs and a small CNN, tiny transformers, the GAN, the Qwen-style LM.
- ``train/``: the ``Trainer`` and its callbacks, the learning-rate range test, the recipes' tasks.
- ``measure`` (optimizer memory), ``stats`` (paired comparisons over seeds), ``claims`` (a lesson's
  claims about its own runs), ``experiments`` (lesson 01's seeded experiments), ``recipes``.
- ``viz/``: the plot style, loss landscapes, widgets. ``utils``: seeding, devices, ``show_source``.
- ``capstone/``: the GPU experiment (``python -m course_lib.capstone``). ``checks/``: what exercise
  notebooks call. The grader itself is the separate package ``course_grading``.
"""

__version__ = "0.1.0"
