"""The checks that exercise notebooks call: ``checks.NAME(your_function)``.

Each check draws fresh random inputs on every run, compares your function with an independent
reference (``torch.optim`` or a closed form), prints one line when it passes, and otherwise raises
:class:`CheckFailed` saying what was expected, what came back, and on which input. Pass ``seed=`` to
draw the same inputs again.

Each module also declares what the functions it checks may call (its ``POLICY``, see
:mod:`course_lib.checks._policy`): where the task is to implement X, calling torch's or course_lib's X
fails the check.

Adding an exercise means adding a module here with its checks and its policy, and importing them below.
"""

from ._core import CheckFailed
from ._policy import POLICIES, Policy, policy_for
from .ablation import converged_at, make_scheduler
from .adam import adam_step, adam_step_uncorrected, uncorrected_ratio
from .adamw import adam_l2_step, adamw_shrink, adamw_step
from .decay_split import decay_groups, part_groups
from .eps_schedule import eps_floor_step, eps_scheduler, paper_eps
from .large_batch import accumulation_step, autocast_gradients, lars_local_lr
from .lion import lion_optimizer, lion_step
from .orthogonalize import newton_schulz, schedule_free_weights, svd_orthogonalize
from .quantization import dequantize_block, quantize_block
from .quadratic import convergence_factor, gd_step, max_stable_lr
from .restore import snapshot_model, snapshot_optimizer
from .rmsprop import rmsprop_nesterov_step, rmsprop_step, run_rmsprop, steps_to_reach
from .schedule import warmup_cosine_lr, warmup_cosine_scheduler

__all__ = [
    "CheckFailed",
    "POLICIES",
    "Policy",
    "policy_for",
    "rmsprop_step",
    "run_rmsprop",
    "steps_to_reach",
    "rmsprop_nesterov_step",
    "adam_step",
    "adam_step_uncorrected",
    "uncorrected_ratio",
    "adamw_step",
    "adam_l2_step",
    "adamw_shrink",
    "warmup_cosine_lr",
    "warmup_cosine_scheduler",
    "lion_step",
    "lion_optimizer",
    "make_scheduler",
    "converged_at",
    "accumulation_step",
    "lars_local_lr",
    "autocast_gradients",
    "quantize_block",
    "dequantize_block",
    "snapshot_model",
    "snapshot_optimizer",
    "gd_step",
    "max_stable_lr",
    "convergence_factor",
    "newton_schulz",
    "svd_orthogonalize",
    "schedule_free_weights",
    "decay_groups",
    "part_groups",
    "paper_eps",
    "eps_scheduler",
    "eps_floor_step",
]
