"""Statistics for comparing runs over seeds, without SciPy: Student's t, and a paired comparison.

A claim that one optimizer beats another is an experiment: the same model, data order and seeds for
both, several seeds, and a difference judged against the seeds' spread. :func:`paired_comparison`
is that judgement (the capstone's verdicts use it); :func:`t_quantile` gives the factor of a
confidence interval for a mean of a few values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["paired_comparison", "t_cdf", "t_quantile"]


def _t_abs_cdf(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) tan(theta)) for Student's t with an integer number ``df`` of degrees of freedom.

    The closed forms of Abramowitz and Stegun, 26.7.3 and 26.7.4: a finite series in
    cos(theta), odd and even ``df`` apart.
    """
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, c  # cos + (2/3) cos^3 + (2*4)/(3*5) cos^5 + ... + cos^(df-2)
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * j) / (2 * j + 1)
        return 2 / math.pi * (theta + s * total)
    total, term = 0.0, 1.0  # 1 + (1/2) cos^2 + (1*3)/(2*4) cos^4 + ... + cos^(df-2)
    for j in range(df // 2):
        total += term
        term *= c * c * (2 * j + 1) / (2 * j + 2)
    return s * total


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t distribution with ``df`` degrees of freedom (an integer in [1, 10000])."""
    if not (isinstance(x, (int, float)) and math.isfinite(x)):
        raise ValueError(f"x must be a finite number, got {x!r}")
    if isinstance(df, bool) or not isinstance(df, int) or not 1 <= df <= 10_000:
        raise ValueError(f"df must be an integer in [1, 10000], got {df!r}")
    half = _t_abs_cdf(math.atan(abs(x) / math.sqrt(df)), df) / 2
    return 0.5 + half if x >= 0 else 0.5 - half


def t_quantile(prob: float, df: int) -> float:
    """The ``prob`` quantile of Student's t distribution with ``df`` degrees of freedom (an integer).

    ``t_quantile(0.975, n - 1)`` is the factor of a two-sided 95 % confidence interval for the
    mean of ``n`` values: mean +- t * sd / sqrt(n). 4.303 for 3 values, 12.71 for 2, 1.96 in
    the limit. The CDF has a closed form for integer ``df`` (:func:`_t_abs_cdf`); the quantile
    is found by bisection, to full double precision, so no SciPy is needed.
    """
    if not (isinstance(prob, (int, float)) and 0 < prob < 1):
        raise ValueError(f"prob must be a number in (0, 1), got {prob!r}")
    if isinstance(df, bool) or not isinstance(df, int) or not 1 <= df <= 10_000:
        raise ValueError(f"df must be an integer in [1, 10000], got {df!r}")
    if prob < 0.5:
        return -t_quantile(1 - prob, df)
    target = 2 * prob - 1  # P(|T| <= t)
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _t_abs_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def paired_comparison(diffs: Sequence[float], control_diffs: Sequence[float] | None = None,
                      confidence: float = 0.95, min_control_rms: float = 1e-4) -> dict[str, Any]:
    """Is a variant's loss different from the baseline's? ``diffs``: variant minus baseline, one per seed.

    Two tests, both at ``confidence``; the verdict is ``"higher"`` or ``"lower"`` (the
    variant's loss) only if both find a difference, else ``"none"`` (``"too few seeds"`` with
    one seed):

    1. the paired t-test: ``|mean|`` must exceed ``t * sd / sqrt(n)``, with ``t`` the
       quantile of Student's t with ``n - 1`` degrees of freedom (``half_width``);
    2. the control: ``control_diffs`` are the control variant's differences from the same
       baseline runs, a change too small to matter, so they show how far apart two runs land
       by chance alone. Their root mean square about zero, ``control_rms``, estimates that
       noise with ``len(control_diffs)`` degrees of freedom, independently of the variant's
       own (perhaps luckily small) spread; ``|mean|`` must also exceed
       ``t * control_rms / sqrt(n)`` (``control_half_width``). This is approximate: the
       control's and the variant's differences share the baseline's runs.

    A control whose runs ended where the baseline's did (``control_rms`` below
    ``min_control_rms``, a ten-thousandth of a nat by default) has not drifted apart from
    them: its spread measures rounding, not chance, and a yardstick of about zero would let
    the t-test decide alone. Then there is no verdict: ``"no yardstick"``, and
    ``beyond_control`` is ``None``.

    Returns ``n``, ``mean``, ``sd``, ``half_width``, ``control_rms``,
    ``control_half_width`` (``None`` without a control), ``significant`` (test 1),
    ``beyond_control`` (test 2; ``None`` without a usable control), ``verdict`` and
    ``note`` (the verdict in a sentence).
    """
    d = [float(x) for x in diffs]
    if not d or not all(math.isfinite(x) for x in d):
        raise ValueError(f"diffs must hold at least one finite number, got {list(diffs)!r}")
    if not (isinstance(confidence, float) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    if not (isinstance(min_control_rms, (int, float)) and math.isfinite(min_control_rms) and min_control_rms >= 0):
        raise ValueError(f"min_control_rms must be a finite number >= 0, got {min_control_rms!r}")
    n = len(d)
    upper = 1 - (1 - confidence) / 2
    mean = sum(d) / n
    out: dict[str, Any] = {"n": n, "mean": mean, "sd": float("nan"), "half_width": float("nan"),
                           "control_rms": None, "control_half_width": None,
                           "significant": False, "beyond_control": None}
    if n >= 2:
        out["sd"] = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        out["half_width"] = t_quantile(upper, n - 1) * out["sd"] / math.sqrt(n)
        out["significant"] = abs(mean) > out["half_width"]
    quiet_control = False
    if control_diffs is not None:
        c = [float(x) for x in control_diffs]
        if not c or not all(math.isfinite(x) for x in c):
            raise ValueError(f"control_diffs must hold at least one finite number, got {list(control_diffs)!r}")
        out["control_rms"] = math.sqrt(sum(x * x for x in c) / len(c))
        out["control_half_width"] = t_quantile(upper, len(c)) * out["control_rms"] / math.sqrt(n)
        quiet_control = out["control_rms"] < min_control_rms
        if not quiet_control:
            out["beyond_control"] = abs(mean) > out["control_half_width"]
    t_text = f"t interval +-{out['half_width']:.2g}"
    if n < 2:
        out["verdict"] = "too few seeds"
        out["note"] = "one seed: no spread, no verdict"
    elif quiet_control:
        out["verdict"] = "no yardstick"
        out["note"] = (f"the control's runs ended within {out['control_rms']:.1g} (rms) of the baseline's: they did "
                       f"not drift apart, so they do not measure chance, and there is no verdict")
    elif out["significant"] and out["beyond_control"] is not False:
        out["verdict"] = "higher" if mean > 0 else "lower"
        control_text = ("" if out["beyond_control"] is None
                        else f" and the control's noise +-{out['control_half_width']:.2g}")
        out["note"] = f"mean {mean:+.4g} lies beyond the {t_text}{control_text}"
    else:
        out["verdict"] = "none"
        failed = (f"the {t_text}" if not out["significant"]
                  else f"the control's noise +-{out['control_half_width']:.2g}")
        out["note"] = f"mean {mean:+.4g} lies within {failed}: no difference detectable with {n} seeds"
    return out
