r"""The capstone's experiment runner: layer-adaptive AdamW against AdamW on a Qwen-style LM.

One call, :func:`run_variant`, trains one optimizer variant with one seed and returns what
the capstone's tables need::

    cfg = capstone_config("smoke", out_dir="runs/smoke")
    result = run_variant("layer_adaptive", seed=0, cfg=cfg)
    result["val_loss"], result["tokens_per_s"], result["mfu"]

The variants (:data:`VARIANTS`) differ in the optimizer alone:

* ``"adamw"``: the baseline, :class:`~course_lib.capstone.method.LayerAdaptiveAdamW`
  with every multiplier 1 and a constant epsilon. That *is* torch's ``AdamW`` (the tests
  check it bit for bit against ``"torch_adamw"``), and using the same class, the same param
  groups and the same kernel for all variants leaves the two changes under study as the
  only difference between runs;
* ``"layer_adaptive"``: the paper's method, per-block learning-rate multipliers
  (:func:`~course_lib.capstone.method.linear_multipliers`, 1.0 to 1.2) and the
  epsilon schedule of its equation 2
  (:class:`~course_lib.capstone.method.PaperEpsScheduler`);
* ``"multipliers_only"`` and ``"eps_only"``: the paper's ablations, one change each;
* ``"control"``: the baseline with every initial weight moved by one float32 step
  (:func:`~course_lib.capstone.method.nudge_weights_`), a change that always acts and is too
  small to matter. How far its loss lands from the baseline's shows how large a difference
  chance alone makes (training can be chaotic: a change in the last digits may grow into a
  different run; where it does not grow, the comparison says so and draws no verdict);
* ``"torch_adamw"``: ``torch.optim.AdamW`` itself, as a reference.

Everything else is shared and seeded: the model's initial weights come from ``seed``, the
batches are a function of ``(seed, step)`` (:class:`course_lib.data.shards.TokenBatches`), so two
variants with the same seed see the same data in the same order. Training goes through
:class:`course_lib.train.Trainer`: warmup-cosine learning rate, gradient clipping (a setting),
periodic evaluation on a fixed validation slice, a checkpoint every ``checkpoint_every``
steps and exact resume: running the same command again after a kill continues from the
last checkpoint and ends with the same weights as an uninterrupted run. With ``log_evals``
(on for every preset but ``smoke``) each evaluation prints a line with the losses, the
throughput since the previous line and, on a GPU of known peak, the MFU (:class:`EvalLog`),
so a long run shows its speed from its first evaluation on.

:func:`paired_comparison` turns the per-seed loss differences into a verdict: a paired
t-test (:func:`t_quantile` gives Student's t quantiles without SciPy) and a comparison
with the noise that the ``"control"`` variant measures. :func:`merge_results` writes
``results.json``: every run with its settings and environment (commit, torch, CUDA, device)
and every variant's verdict with its interval; :func:`summary_table` rebuilds the table
from that file alone (``python -m course_lib.capstone --summarize OUT_DIR``).

On a GPU the runner uses bf16 autocast, ``torch.compile`` (the loss included), the fused
AdamW kernel, batches drawn ahead into pinned memory and no host sync between evaluations,
and reports the model FLOPs utilization (MFU) against the GPU's bf16 peak
(:data:`PEAK_BF16_TFLOPS`); :mod:`.bench` times the parts of a step (``make gpu-check``).
Under ``torchrun`` each process trains on its own slice of every
batch through ``DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs); rank 0 writes the
results. ``python -m course_lib.capstone --help`` lists the command-line options.

The package, one module per concern:

- :mod:`.method`: the paper's method (:class:`LayerAdaptiveAdamW`, the multipliers, the epsilon
  schedule) and the variants that the experiment compares;
- :mod:`.config`: :class:`CapstoneConfig` and the presets;
- :mod:`.data`: token shards and each process's slice of a batch;
- :mod:`.run`: one run (:func:`run_variant`), the epsilon probe, the evaluation log;
- :mod:`.report`: the results file (:func:`merge_results`) and its summary (:func:`summary_table`);
- :mod:`.bench`: the step-time breakdown and the throughput probes of ``make gpu-check``;
- :mod:`.mfu`: the GPU peaks and model FLOPs utilization;
- :mod:`.distributed`: rank, world size and device under torchrun;
- :mod:`.cli`: the command line (``python -m course_lib.capstone``). Verdicts use :func:`course_lib.stats.paired_comparison`.
"""

from ..stats import paired_comparison, t_cdf, t_quantile
from .cli import main
from .config import PRESETS, CapstoneConfig, capstone_config
from .data import Prefetched, StepBatches, prepare_data
from .method import (PAPER_VARIANTS, VARIANTS, LayerAdaptiveAdamW, PaperEpsScheduler, Variant, layer_param_groups,
                     linear_multipliers, nudge_weights_, paper_eps, plot_paper_eps)
from .mfu import PEAK_BF16_TFLOPS, mfu, peak_bf16_tflops
from .report import environment, merge_results, summary_table
from .run import EpsProbe, EvalLog, build_optimizer, load_run, run_variant, sqrt_v_hat

__all__ = [
    "PAPER_VARIANTS", "PEAK_BF16_TFLOPS", "PRESETS", "VARIANTS", "CapstoneConfig", "EpsProbe", "EvalLog",
    "LayerAdaptiveAdamW", "PaperEpsScheduler", "Prefetched", "StepBatches", "Variant", "build_optimizer",
    "capstone_config", "environment", "layer_param_groups", "linear_multipliers", "load_run", "main",
    "merge_results", "mfu", "nudge_weights_", "paired_comparison", "paper_eps", "peak_bf16_tflops",
    "plot_paper_eps", "prepare_data", "run_variant", "sqrt_v_hat", "summary_table", "t_cdf", "t_quantile",
]
