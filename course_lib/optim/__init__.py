"""course_lib.optim: PyTorch optimizers written to be read.

Each optimizer is a :class:`torch.optim.Optimizer` subclass with torch's argument names and
defaults, built on :class:`CourseOptimizer` (the bookkeeping), and its math is one function on one
tensor (``sgd_update``, ``adam_update``, ...) that the optimizer calls.

First-order and adaptive methods (lessons 02-04): SGD, Adagrad, RMSprop, Adam, AdamW, NAdam, RAdam.
Modern optimizers (lessons 05-08): LAMB, LARS, Adafactor, Adam8bit, AdamW8bit, Lion, SophiaG, Muon,
ScheduleFreeAdamW, Lookahead. The capstone's LayerAdaptiveAdamW is in :mod:`course_lib.capstone.method`.
"""

from . import (
    _base,
    adafactor,
    adagrad,
    adam,
    adam8bit,
    lamb,
    lars,
    lion,
    lookahead,
    muon,
    nadam,
    radam,
    rmsprop,
    schedule_free,
    sgd,
    sophia,
)
from ._base import *  # noqa: F403
from .adafactor import *  # noqa: F403
from .adagrad import *  # noqa: F403
from .adam import *  # noqa: F403
from .adam8bit import *  # noqa: F403
from .lamb import *  # noqa: F403
from .lars import *  # noqa: F403
from .lion import *  # noqa: F403
from .lookahead import *  # noqa: F403
from .muon import *  # noqa: F403
from .nadam import *  # noqa: F403
from .radam import *  # noqa: F403
from .rmsprop import *  # noqa: F403
from .schedule_free import *  # noqa: F403
from .sgd import *  # noqa: F403
from .sophia import *  # noqa: F403

__all__ = [name for module in (_base, sgd, adagrad, rmsprop, adam, nadam, radam, lamb, lars, adafactor, adam8bit,
                               lion, sophia, muon, schedule_free, lookahead)
           for name in module.__all__]
