"""Training loops: the :class:`Trainer`, its callbacks, the learning-rate range test, the recipes' tasks.

- :mod:`.trainer`: :class:`Trainer` and :class:`TrainConfig` (accumulation, clipping, mixed
  precision, schedules, evaluation, checkpoints with exact resume);
- :mod:`.callbacks`: :class:`Callback`, and the two that some optimizers need:
  :class:`SophiaHessianRefresh` and :class:`ScheduleFreeEval`;
- :mod:`.lr_finder`: :func:`lr_range_test` (Smith's range test), which restores what it touched;
- :mod:`.tasks`: losses and scores of the recipes' stand-in tasks, and :func:`train_gan`.
"""

from .callbacks import Callback, ScheduleFreeEval, SophiaHessianRefresh
from .lr_finder import RangeTestResult, lr_range_test, smooth, suggest_lr
from .trainer import TrainConfig, Trainer, count_examples, evaluate, grad_norm, move_to, supervised_loss

__all__ = ["Callback", "RangeTestResult", "ScheduleFreeEval", "SophiaHessianRefresh", "TrainConfig", "Trainer",
           "count_examples", "evaluate", "grad_norm", "lr_range_test", "move_to", "smooth", "suggest_lr",
           "supervised_loss"]
