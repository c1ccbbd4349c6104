"""The record of an experiment: what ran where, every run's result, the verdicts, and the table rebuilt from it.

Each run writes ``<out_dir>/runs/<variant>-seed<seed>/result.json`` holding its numbers, its
resolved settings (``config``) and what ran it (``environment``: commit, Python, torch, CUDA,
device). :func:`merge_results` collects the finished runs into ``<out_dir>/results.json`` and
adds what a reader of the file needs to judge them without the code that made it:

- ``config``: the settings the runs share (``"varies"`` for one that differs between runs; those
  are listed under ``config_differs``, and no verdict is drawn across one that shapes the
  trained weights);
- ``environment``: the fields of the runs' environments that agree (``"varies"`` where not);
- ``comparisons``: each variant against ``adamw`` over the seeds both have, the paired
  comparison of :func:`course_lib.stats.paired_comparison` with the control as yardstick,
  its 95 % interval and its verdict.

:func:`summary_table` rebuilds the experiment's table from that file alone
(``python -m course_lib.capstone --summarize OUT_DIR`` prints it).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..stats import paired_comparison
from .config import NOT_IN_FINGERPRINT

__all__ = ["RECORD_FORMAT", "environment", "git_commit", "merge_results", "summary_table"]

RECORD_FORMAT = "course_lib.capstone/results-2"
"""The ``format`` field of ``results.json``: runs, config, environment and comparisons."""

BASELINE, CONTROL = "adamw", "control"
_PER_STEP = ("train_loss", "lr")  # long per-step lists, left out of results.json
_NOT_SETTINGS = {"variant", "seed", "seeds", "out_dir", "data_dir", "progress", "log_evals"}


def git_commit(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git checkout holding ``path`` (default: this package).

    ``dirty``: tracked files differ from the commit. ``None`` for both outside a git checkout
    (an installed wheel) or without git.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a run ran on: commit, Python, torch, CUDA and cuDNN versions, device type and name, CPU threads."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    env = {
        **git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if on_cuda else None,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if on_cuda else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
        "platform": platform.platform(),
    }
    return env


def _common(dicts: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The keys whose values agree across ``dicts`` (others: ``"varies"``), and the sorted keys that differ."""
    keys = sorted({k for d in dicts for k in d})
    common, differ = {}, []
    for key in keys:
        values = [json.dumps(d.get(key), sort_keys=True) for d in dicts]
        if len(set(values)) == 1:
            common[key] = dicts[0].get(key)
        else:
            common[key] = "varies"
            differ.append(key)
    return common, differ


def _comparisons(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each variant against the baseline, paired by seed, with the control as the yardstick of chance."""
    loss = {(r["name"], r["seed"]): r["val_loss"] for r in runs}
    variants = sorted({r["name"] for r in runs} - {BASELINE})
    base_seeds = {s for v, s in loss if v == BASELINE}
    control_seeds = sorted(s for v, s in loss if v == CONTROL and s in base_seeds)
    control_diffs = [loss[CONTROL, s] - loss[BASELINE, s] for s in control_seeds] or None
    out = {}
    for variant in variants:
        seeds = sorted(s for v, s in loss if v == variant and s in base_seeds)
        if not seeds:
            out[variant] = {"seeds": [], "verdict": "no baseline",
                            "note": f"no {BASELINE} run shares a seed with {variant}"}
            continue
        diffs = [loss[variant, s] - loss[BASELINE, s] for s in seeds]
        c = paired_comparison(diffs, None if variant == CONTROL else control_diffs)
        c["seeds"] = seeds
        c["control_seeds"] = [] if variant == CONTROL else control_seeds
        c["interval"] = ([c["mean"] - c["half_width"], c["mean"] + c["half_width"]]
                         if math.isfinite(c["half_width"]) else None)
        out[variant] = c
    return out


def _json_safe(value: Any) -> Any:
    """NaN and infinities as ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def merge_results(out_dir: str | Path, *, write: bool = True) -> dict[str, Any]:
    """Collect every run's ``result.json`` under ``out_dir/runs`` into ``out_dir/results.json``, with the verdicts.

    Returns the record: ``format``, ``created``, ``config`` (the settings the runs share),
    ``config_differs`` (settings that differ between runs), ``environment`` (its fields that
    agree across runs), ``runs`` (one entry per finished run, sorted by variant and seed,
    per-step lists left out) and ``comparisons`` (see the module docstring). Use it after a
    job array whose tasks each ran some of the variants and seeds into the same ``out_dir``.
    """
    out = Path(out_dir)
    runs = []
    for path in sorted((out / "runs").glob("*/result.json")):
        result = json.loads(path.read_text())
        runs.append({k: v for k, v in result.items() if k not in _PER_STEP})
    runs.sort(key=lambda r: (r["name"], r["seed"]))
    settings = [{k: v for k, v in r.get("config", {}).items() if k not in _NOT_SETTINGS} for r in runs]
    config, config_differs = _common(settings) if runs else ({}, [])
    env, _ = _common([r.get("environment", {}) for r in runs]) if runs else ({}, [])
    comparisons = _comparisons(runs) if runs else {}
    shaping = [k for k in config_differs if k not in NOT_IN_FINGERPRINT]
    if shaping:
        for c in comparisons.values():
            c["verdict"] = "settings differ"
            c["note"] = (f"the runs differ in {', '.join(shaping)}: a difference in loss is not "
                         f"the optimizer's alone, so no verdict is drawn")
    record = _json_safe({
        "format": RECORD_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "config_differs": config_differs,
        "environment": env,
        "runs": runs,
        "comparisons": comparisons,
    })
    if write:  # several jobs may merge into one folder: a temporary file of this process's own
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f"results.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, out / "results.json")
    return record


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def summary_table(record: dict[str, Any] | str | Path) -> str:
    """The experiment's summary, rebuilt from a ``results.json`` (a path, a folder holding it, or the loaded dict).

    One line per variant: mean validation loss and its spread over seeds, the paired
    difference from AdamW with its 95 % interval, the verdict, tokens/s and MFU; then the
    settings, the commit and the device the numbers come from.
    """
    if not isinstance(record, dict):
        path = Path(record)
        path = path / "results.json" if path.is_dir() else path
        if not path.exists():
            raise ValueError(f"no results file at {path}: run the experiment (or --merge-only) first")
        record = json.loads(path.read_text())
    runs = record.get("runs", [])
    if not runs:
        return "no finished runs"
    comparisons = record.get("comparisons", {})
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_variant.setdefault(r["name"], []).append(r)
    order = [BASELINE] * (BASELINE in by_variant) + sorted(v for v in by_variant if v not in (BASELINE, CONTROL))
    order += [CONTROL] * (CONTROL in by_variant)
    head = (f"{'variant':>17} | {'seeds':>5} | {'val loss':>8} | {'sd':>7} | {'minus AdamW, paired, 95%':>25} | "
            f"{'verdict':>15} | {'tokens/s':>10} | MFU")
    lines = [head, "-" * len(head)]
    for variant in order:
        rs = by_variant[variant]
        losses = [r["val_loss"] for r in rs]
        mean = sum(losses) / len(losses)
        sd = (math.sqrt(sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)) if len(losses) > 1
              else float("nan"))
        tps = [r["tokens_per_s"] for r in rs if r.get("tokens_per_s") is not None]
        mfus = [r["mfu"] for r in rs if r.get("mfu") is not None]
        c = comparisons.get(variant)
        paired = verdict = ""
        if c is not None and "mean" in c:
            paired = f"{c['mean']:+.4f} +- {_fmt(c.get('half_width'), '.4f')}"
            verdict = c["verdict"]
        elif c is not None:
            verdict = c["verdict"]
        lines.append(f"{variant:>17} | {len(rs):>5} | {mean:>8.4f} | {_fmt(sd, '7.4f'):>7} | {paired:>25} | "
                     f"{verdict:>15} | {_fmt(sum(tps) / len(tps) if tps else None, ',.0f'):>10} | "
                     f"{_fmt(sum(mfus) / len(mfus) if mfus else None, '.1%')}")
    notes = [f"{v}: {c['note']}" for v, c in comparisons.items() if c.get("note")]
    cfg, env = record.get("config", {}), record.get("environment", {})
    lines.append("")
    lines.append(f"preset {cfg.get('preset')!r}, {cfg.get('steps')} steps of {cfg.get('batch_size')} sequences, "
                 f"lr {cfg.get('lr')}, clip_norm {cfg.get('clip_norm')}, data {cfg.get('source')!r}/"
                 f"{cfg.get('tokenizer')!r}")
    if record.get("config_differs"):
        lines.append(f"settings that differ between runs: {', '.join(record['config_differs'])}")
    commit = env.get("commit")
    lines.append(f"commit {commit[:12] if isinstance(commit, str) and commit != 'varies' else commit}"
                 f"{' (with uncommitted changes)' if env.get('dirty') is True else ''}; torch {env.get('torch')}, "
                 f"CUDA {env.get('cuda')}, {env.get('device')} {env.get('device_name')!r}")
    lines.extend(notes)
    return "\n".join(lines)
