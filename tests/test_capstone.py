"""Tests of course_lib.capstone: the runner's results, the baseline, exact resume, DDP, MFU."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import capstone
from course_lib.data import shards
from course_lib.capstone import (
    CapstoneConfig,
    EpsProbe,
    EvalLog,
    StepBatches,
    capstone_config,
    load_run,
    merge_results,
    mfu,
    paired_comparison,
    peak_bf16_tflops,
    run_variant,
    t_cdf,
    t_quantile,
)
from course_lib.models import QwenConfig, QwenLM, count_parameters
from course_lib.capstone.method import paper_eps
from course_lib.train import Callback

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(steps=12, batch_size=4, eval_every=6, eval_batches=1, eval_batch_size=8,
            probe_every=6, checkpoint_every=5)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_dir(capstone_data_dir) -> str:
    return capstone_data_dir


def tiny(out_dir: Path, data_dir: str, **overrides) -> CapstoneConfig:
    return capstone_config("smoke", out_dir=str(out_dir), data_dir=data_dir, max_bytes=300_000,
                           **{**TINY, **overrides})


def final_weights(cfg: CapstoneConfig, variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return load_run(variant, seed, cfg)[0].state_dict()


# ----------------------------------------------------------------------------- one run


def test_a_variant_runs_and_returns_every_field(tmp_path, data_dir):
    cfg = tiny(tmp_path, data_dir)
    result = run_variant("layer_adaptive", 0, cfg)
    assert {"name", "seed", "val_loss", "tokens_per_s", "mfu", "steps", "tokens", "params",
            "curve"} <= set(result)
    assert result["name"] == "layer_adaptive" and result["seed"] == 0
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(257)
    assert result["steps"] == 12 and result["tokens"] == 12 * 4 * 64
    assert result["params"] == count_parameters(QwenConfig.preset("smoke"))
    assert result["mfu"] is None and result["device"] == "cpu"  # no peak for a CPU
    assert result["tokens_per_s"] > 0
    assert [s for s, _ in result["curve"]] == [6, 12] and result["curve"][-1][1] == result["val_loss"]
    assert len(result["train_loss"]) == 12
    # the probe saw the paper's eps schedule: after step s the next step uses paper_eps(s)
    probe = result["eps_probe"]
    assert probe["probe_step"] == [1, 6, 12]
    assert probe["probe_eps"] == pytest.approx([paper_eps(s) for s in [1, 6, 12]], rel=1e-12)
    assert all(q == sorted(q) for q in probe["probe_sqrt_v"])
    saved = json.loads((tmp_path / "runs" / "layer_adaptive-seed0" / "result.json").read_text())
    assert saved["val_loss"] == result["val_loss"]


def test_the_variants_share_initial_weights_and_data_and_differ_in_the_optimizer(tmp_path, data_dir):
    cfg = tiny(tmp_path, data_dir, steps=3, eval_every=3, probe_every=None)
    results = {v: run_variant(v, 0, cfg) for v in capstone.PAPER_VARIANTS}
    # same initial weights and batches: the first step's loss is the same; the warmup gives
    # step 1 a learning rate of 0, so the weights and the loss of step 2 are still the same
    assert len({tuple(r["train_loss"][:2]) for r in results.values()}) == 1
    assert len({r["train_loss"][2] for r in results.values()}) > 1
    optimizers = {v: load_run(v, 0, cfg)[1] for v in results}
    lr_mults = {v: [g["lr_mult"] for g in opt.param_groups] for v, opt in optimizers.items()}
    assert set(lr_mults["adamw"]) == set(lr_mults["eps_only"]) == {1.0}
    assert lr_mults["layer_adaptive"] == lr_mults["multipliers_only"] != lr_mults["adamw"]
    assert max(lr_mults["layer_adaptive"]) == pytest.approx(1.2)
    eps = {v: {g["eps"] for g in opt.param_groups} for v, opt in optimizers.items()}
    assert eps["adamw"] == eps["multipliers_only"] == {1e-8}
    assert eps["eps_only"] == eps["layer_adaptive"] == {paper_eps(3)}
    run_variant("control", 0, cfg)
    control = load_run("control", 0, cfg)[1]
    assert {g["eps"] for g in control.param_groups} == {1e-8}  # the control's optimizer is AdamW's
    assert {g["lr_mult"] for g in control.param_groups} == {1.0}


def test_the_control_nudges_each_initial_weight_by_one_ulp_and_always_differs(tmp_path, data_dir):
    torch.manual_seed(7)
    model = QwenLM(QwenConfig.preset("smoke"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    capstone.nudge_weights_(model, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)  # a generator of its own: the run's randomness is untouched
    ups = downs = 0
    for name, after in model.state_dict().items():
        old = before[name]
        zero = old == 0
        assert torch.equal(after[zero], old[zero]), name  # zeros (initial biases) stay zero
        up = torch.nextafter(old, torch.full_like(old, math.inf))
        down = torch.nextafter(old, torch.full_like(old, -math.inf))
        moved = ~zero
        assert bool(((after == up) | (after == down))[moved].all()), name  # exactly one ulp, one way or the other
        ups += int((after == up)[moved].sum())
        downs += int((after == down)[moved].sum())
    assert ups > 0.45 * (ups + downs) and downs > 0.45 * (ups + downs)  # a fair coin per entry
    # the nudge always acts: every seed's control run ends with other weights than the baseline's
    cfg = tiny(tmp_path, data_dir, steps=4, eval_every=4, probe_every=None, checkpoint_every=None)
    for seed in range(3):
        run_variant("adamw", seed, cfg)
        run_variant("control", seed, cfg)
        a, b = final_weights(cfg, "adamw", seed), final_weights(cfg, "control", seed)
        assert all(not torch.equal(a[k], b[k]) for k in a if a[k].count_nonzero() > 0), seed


def test_baseline_is_torch_adamw_bit_for_bit(tmp_path, data_dir):
    cfg = tiny(tmp_path, data_dir, steps=8, eval_every=4)
    ours = run_variant("adamw", 1, cfg)
    reference = run_variant("torch_adamw", 1, cfg)
    assert ours["train_loss"] == reference["train_loss"]
    assert ours["val_loss"] == reference["val_loss"]
    a, b = final_weights(cfg, "adamw", 1), final_weights(cfg, "torch_adamw", 1)
    for name in a:
        assert torch.equal(a[name], b[name]), name


class Kill(Callback):
    """Stands in for a kill: stops the process (with an exception) after a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.step == self.step:
            raise KeyboardInterrupt(f"killed after step {self.step}")


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, data_dir):
    straight_cfg = tiny(tmp_path / "straight", data_dir)
    straight = run_variant("layer_adaptive", 0, straight_cfg)

    cfg = tiny(tmp_path / "killed", data_dir)
    with pytest.raises(KeyboardInterrupt):
        run_variant("layer_adaptive", 0, cfg, callbacks=[Kill(8)])
    ckpt = tmp_path / "killed" / "runs" / "layer_adaptive-seed0" / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["step"] == 5  # the last checkpoint before the kill
    torch.manual_seed(1234)  # whatever the process did in between
    resumed = run_variant("layer_adaptive", 0, cfg)  # the same command again

    assert resumed["val_loss"] == straight["val_loss"]
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["curve"] == straight["curve"]
    assert resumed["eps_probe"] == straight["eps_probe"]
    a, b = final_weights(straight_cfg, "layer_adaptive"), final_weights(cfg, "layer_adaptive")
    for name in a:
        assert torch.equal(a[name], b[name]), name

    again = run_variant("layer_adaptive", 0, cfg)  # a finished run is read back, not retrained
    assert again["val_loss"] == straight["val_loss"] and again["steps"] == 12


def test_a_checkpoint_with_other_settings_is_not_resumed(tmp_path, data_dir):
    cfg = tiny(tmp_path, data_dir, steps=5)
    run_variant("eps_only", 0, cfg)
    with pytest.raises(ValueError, match="lr"):
        run_variant("eps_only", 0, tiny(tmp_path, data_dir, steps=5, lr=5e-2))


# ----------------------------------------------------------------------------- batches and DDP


def test_each_process_gets_its_slice_of_the_same_batch(data_dir):
    tokens = np.asarray(shards.load_split(data_dir))
    cfg = tiny(Path("unused"), data_dir, batch_size=8)
    whole = StepBatches(tokens, cfg, 64, seed=3)
    assert whole.accumulation == 1
    split_cfg = tiny(Path("unused"), data_dir, batch_size=8, micro_batch_size=2)
    for step in [0, 5]:
        x, y, last = next(whole.batches(0, step))
        assert last
        parts = []
        for rank in range(2):
            sliced = StepBatches(tokens, split_cfg, 64, seed=3, rank=rank, world=2)
            assert sliced.accumulation == 2
            it = sliced.batches(0, step * 2)
            micro = [next(it) for _ in range(2)]
            assert [m[2] for m in micro] == [False, True]
            parts += [m[0] for m in micro]
        assert torch.equal(torch.cat(parts), x)
    with pytest.raises(ValueError, match="divisible"):
        StepBatches(tokens, tiny(Path("unused"), data_dir, batch_size=5), 64, seed=0, world=2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_across_two_nodes_of_one_gloo_process_each_equals_one_process(tmp_path, data_dir):
    """The multi-node launch of book/capstone_gpu.md, on one machine: two torchrun agents (two "nodes",
    one CPU process each) meet at a c10d rendezvous and train through ``python -m course_lib.capstone``."""
    settings = dict(steps=6, batch_size=4, eval_every=3, probe_every=3, checkpoint_every=None)
    single_cfg = tiny(tmp_path / "single", data_dir, **settings)
    single = run_variant("layer_adaptive", 0, single_cfg)

    out = tmp_path / "ddp"
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**TINY, **settings}.items()
                 if k != "steps" and v is not None]
    endpoint = f"127.0.0.1:{_free_port()}"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "capstone-test"]
    program = ["-m", "course_lib.capstone", "--preset", "smoke", "--out-dir", str(out),
               "--data-dir", data_dir, "--variants", "layer_adaptive", "--seeds", "0",
               "--steps", "6", "--set", "max_bytes=300000", "micro_batch_size=1", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COURSE_DEVICE": "cpu"}
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    sinks = [open(log, "w") for log in logs]
    try:
        nodes = [subprocess.Popen([*launcher, *program], env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
                 for sink in sinks]
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in locals().get("nodes", []):
            if node.poll() is None:
                node.kill()
        for sink in sinks:
            sink.close()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    merged = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["name"], r["seed"], r["world_size"]) for r in merged] == [("layer_adaptive", 0, 2)]
    ddp = merged[0]
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    assert [v for _, v in ddp["curve"]] == pytest.approx([v for _, v in single["curve"]], rel=1e-5)
    assert ddp["tokens"] == single["tokens"]
    a = final_weights(single_cfg, "layer_adaptive")
    b = final_weights(tiny(out, data_dir, **settings), "layer_adaptive")
    # Round-off differs (gloo sums the two halves), and Adam divides each gradient by its own
    # scale, so an entry with a near-zero gradient (the key biases of slowly turning rotary pairs)
    # can move by a visible fraction of a step: allow 1e-5, a thousandth of the learning rate.
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------- MFU, config, merge


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.4),
    ("NVIDIA H200 NVL", 835.5),
    ("NVIDIA B200", 2250.0),
    ("NVIDIA GB200", None),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA A10", 125.0),
    ("NVIDIA A10G", None),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.05),
    ("NVIDIA GeForce RTX 4090", None),
    ("Tesla V100-SXM2-16GB", None),
    (None, None),
])
def test_peak_table_matches_device_names(name, peak):
    assert peak_bf16_tflops(name) == peak


def test_mfu_divides_achieved_by_peak_flops():
    assert mfu(1e6, 3e8, "NVIDIA H100 80GB HBM3") == pytest.approx(3e14 / 989.4e12)
    assert mfu(8e6, 3e8, "NVIDIA A100-SXM4-40GB", n_devices=8) == pytest.approx(3e14 / 312e12)
    assert mfu(1e6, 3e8, None) is None and mfu(1e6, 3e8, "NVIDIA A10G") is None


def test_config_presets_and_overrides():
    cfg = capstone_config("gpu", model={"n_layers": 4}, lr=None, seeds=[5])
    assert cfg.model_config().n_layers == 4 and cfg.model_config().d_model == 512
    assert cfg.lr == capstone.PRESETS["gpu"]["lr"] and cfg.seeds == (5,)
    assert capstone_config("paper").model_config(vocab_size=50257).vocab_size == 50257
    with pytest.raises(ValueError, match="preset"):
        capstone_config("huge")
    with pytest.raises(ValueError, match="learning_rate"):
        capstone_config("smoke", learning_rate=1e-3)
    with pytest.raises(ValueError, match="variant"):
        run_variant("sgd", 0, capstone_config("smoke"))
    with pytest.raises(ValueError, match="every"):
        EpsProbe(0)
    for bad, name in [(dict(clip_norm=-1.0), "clip_norm"), (dict(compile_mode="fastest"), "compile_mode"),
                      (dict(prefetch=-1), "prefetch"), (dict(sync_every=0), "sync_every"),
                      (dict(steps=0), "steps"), (dict(lr=float("nan")), "lr"), (dict(seeds=[-1]), "seeds"),
                      (dict(betas=(0.9, 1.0)), "betas"), (dict(precision="fp8"), "precision")]:
        with pytest.raises(ValueError, match=name):
            capstone_config("smoke", **bad)


def test_clipping_is_a_setting_and_zero_turns_it_off(tmp_path, data_dir):
    assert capstone.PRESETS["paper"]["clip_norm"] == 0  # the paper's setup names no clipping
    settings = dict(steps=6, eval_every=6, probe_every=None, checkpoint_every=None)
    clipped = run_variant("adamw", 0, tiny(tmp_path / "clip", data_dir, clip_norm=0.05, **settings))
    off = run_variant("adamw", 0, tiny(tmp_path / "off", data_dir, clip_norm=0, **settings))
    huge = run_variant("adamw", 0, tiny(tmp_path / "huge", data_dir, clip_norm=1e9, **settings))
    assert off["train_loss"] == huge["train_loss"]  # a threshold never reached is no clipping
    assert off["train_loss"] != clipped["train_loss"]
    assert off["config"]["clip_norm"] == 0 and clipped["config"]["clip_norm"] == 0.05
    with pytest.raises(SystemExit):
        capstone.main(["--out-dir", str(tmp_path / "x"), "--set", "clip_norm=null"])


def test_sync_points_fall_on_every_evaluation_and_probe():
    assert capstone.run.sync_every(capstone_config("gpu")) == 200
    assert capstone.run.sync_every(capstone_config("smoke", eval_every=20, probe_every=15)) == 5
    assert capstone.run.sync_every(capstone_config("smoke", probe_every=14, eval_every=7)) == 7
    assert capstone.run.sync_every(capstone_config("smoke", sync_every=3)) == 3


def test_merge_collects_finished_runs_into_results_json(tmp_path, data_dir):
    cfg = tiny(tmp_path, data_dir, steps=2, eval_every=2, probe_every=None)
    for variant in ["eps_only", "adamw"]:
        run_variant(variant, 0, cfg)
    assert capstone.main(["--merge-only", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "results.json").read_text())
    runs = record["runs"]
    assert [(r["name"], r["seed"]) for r in runs] == [("adamw", 0), ("eps_only", 0)]
    assert runs == merge_results(tmp_path, write=False)["runs"]
    assert all("train_loss" not in r and math.isfinite(r["val_loss"]) for r in runs)


def test_results_json_is_a_complete_record_and_the_table_is_rebuilt_from_it_alone(tmp_path, data_dir, capsys):
    cfg = tiny(tmp_path, data_dir, steps=3, eval_every=3, probe_every=None, checkpoint_every=None)
    for variant in ["adamw", "multipliers_only", "control"]:
        for seed in (0, 1):
            run_variant(variant, seed, cfg)
    record = merge_results(tmp_path)
    assert record["format"] == capstone.report.RECORD_FORMAT
    # the resolved settings, the commit and where it ran
    assert record["config"]["lr"] == cfg.lr and record["config"]["steps"] == 3
    assert record["config"]["model"] == {"preset": "smoke"} and record["config_differs"] == []
    env = record["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["cuda"] == torch.version.cuda
    assert "commit" in env and "dirty" in env
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert env["commit"] == head
    # each variant's verdict, with its interval, computed from the runs in the file
    loss = {(r["name"], r["seed"]): r["val_loss"] for r in record["runs"]}
    c = record["comparisons"]["multipliers_only"]
    want = paired_comparison([loss["multipliers_only", s] - loss["adamw", s] for s in (0, 1)],
                             [loss["control", s] - loss["adamw", s] for s in (0, 1)])
    assert c["verdict"] == want["verdict"] and c["mean"] == pytest.approx(want["mean"])
    assert c["interval"] == pytest.approx([want["mean"] - want["half_width"], want["mean"] + want["half_width"]])
    assert c["seeds"] == [0, 1] and c["control_seeds"] == [0, 1] and c["note"]
    assert record["comparisons"]["control"]["control_rms"] is None  # the control is not its own yardstick
    # the table from the file alone: the runs' folders may be gone
    table = capstone.summary_table(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "runs")
    assert capstone.main(["--summarize", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    assert printed == table
    for variant in ("adamw", "multipliers_only", "control"):
        assert variant in printed
    assert f"{c['mean']:+.4f}" in printed and c["verdict"] in printed
    assert torch.__version__ in printed and "preset 'smoke'" in printed
    with pytest.raises(SystemExit):
        capstone.main(["--summarize", str(tmp_path / "nowhere")])
    assert "no results file" in capsys.readouterr().err


def test_no_verdict_across_runs_with_other_settings(tmp_path, data_dir):
    base = dict(steps=2, eval_every=2, probe_every=None, checkpoint_every=None)
    for seed in (0, 1):
        run_variant("adamw", seed, tiny(tmp_path, data_dir, **base))
        run_variant("eps_only", seed, tiny(tmp_path, data_dir, lr=2e-2, **base))
        # how fast it went is not a setting of the run: it does not block a verdict
        run_variant("control", seed, tiny(tmp_path, data_dir, prefetch=1, **base))
    record = merge_results(tmp_path, write=False)
    assert record["config"]["lr"] == "varies" and set(record["config_differs"]) == {"lr", "prefetch"}
    assert record["comparisons"]["eps_only"]["verdict"] == "settings differ"
    assert "lr" in record["comparisons"]["eps_only"]["note"]


# ----------------------------------------------------------------------------- statistics

# Two-sided 95 % (the 0.975 quantile) and 90 % (0.95) critical values of Student's t, as printed
# in every statistics table (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2), to three decimals.
T_TABLE = {1: (12.706, 6.314), 2: (4.303, 2.920), 3: (3.182, 2.353), 4: (2.776, 2.132),
           5: (2.571, 2.015), 10: (2.228, 1.812), 20: (2.086, 1.725), 30: (2.042, 1.697),
           100: (1.984, 1.660)}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_printed_table(df):
    q975, q95 = T_TABLE[df]
    assert round(t_quantile(0.975, df), 3) == q975
    assert round(t_quantile(0.95, df), 3) == q95
    assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df), rel=1e-12)


def test_t_quantile_tends_to_the_normal_quantile():
    normal = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.975, dtype=torch.float64)))
    # the expansion of Abramowitz and Stegun 26.7.5: z + (z^3 + z) / (4 df)
    # + (5 z^5 + 16 z^3 + 3 z) / (96 df^2) + O(1/df^3)
    z = normal
    for df in (1000, 10_000):
        expansion = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        assert t_quantile(0.975, df) == pytest.approx(expansion, abs=1e-8)
    values = [t_quantile(0.975, df) for df in range(1, 60)]
    assert all(a > b for a, b in zip(values, values[1:]))  # more data, narrower intervals


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 12])
def test_t_cdf_integrates_the_density(df):
    """Oracle: torch's Student t density, integrated numerically (Simpson's rule) from 0 to x."""
    dist = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64))
    for x in (0.3, 1.0, 2.5, 6.0):
        grid = torch.linspace(0, x, 4001, dtype=torch.float64)
        dens = dist.log_prob(grid).exp()
        h = x / 4000
        integral = float(h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum()))
        assert t_cdf(x, df) == pytest.approx(0.5 + integral, abs=1e-10)
        assert t_cdf(-x, df) == pytest.approx(0.5 - integral, abs=1e-10)
        assert t_cdf(t_quantile(t_cdf(x, df), df), df) == pytest.approx(t_cdf(x, df), abs=1e-12)


def test_two_standard_errors_is_not_95_percent_with_three_seeds():
    # the rule "twice the standard error" with 3 seeds (2 degrees of freedom) has p = 0.18
    assert 2 * (1 - t_cdf(2.0, 2)) == pytest.approx(1 - math.sqrt(2 / 3), rel=1e-12)  # closed form
    assert 2 * (1 - t_cdf(2.0, 2)) == pytest.approx(0.1835, abs=1e-4)


def test_statistics_reject_bad_input():
    for prob in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="prob"):
            t_quantile(prob, 3)
    for df in (0, -1, 2.5, True, 10_001):
        with pytest.raises(ValueError, match="df"):
            t_quantile(0.975, df)
        with pytest.raises(ValueError, match="df"):
            t_cdf(1.0, df)
    with pytest.raises(ValueError, match="x"):
        t_cdf(float("inf"), 3)
    with pytest.raises(ValueError, match="diffs"):
        paired_comparison([])
    with pytest.raises(ValueError, match="diffs"):
        paired_comparison([0.1, float("nan")])
    with pytest.raises(ValueError, match="control_diffs"):
        paired_comparison([0.1, 0.2], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([0.1, 0.2], confidence=1.0)
    with pytest.raises(ValueError, match="min_control_rms"):
        paired_comparison([0.1, 0.2], [0.1], min_control_rms=-1)


def test_paired_comparison_is_a_t_test_and_asks_the_control():
    d = [0.020, 0.025, 0.030]
    c = paired_comparison(d)
    sd = float(np.std(d, ddof=1))
    assert c["n"] == 3 and c["mean"] == pytest.approx(0.025) and c["sd"] == pytest.approx(sd)
    assert c["half_width"] == pytest.approx(4.302652729911275 * sd / math.sqrt(3))
    assert c["significant"] and c["beyond_control"] is None and c["verdict"] == "higher"
    # the same differences, negated: lower loss
    assert paired_comparison([-x for x in d])["verdict"] == "lower"
    # a control whose runs land far apart: the same differences are within its noise
    noisy = paired_comparison(d, control_diffs=[0.04, -0.03, 0.001])
    rms = math.sqrt((0.04**2 + 0.03**2 + 0.001**2) / 3)
    assert noisy["control_rms"] == pytest.approx(rms)
    assert noisy["control_half_width"] == pytest.approx(3.182446305284263 * rms / math.sqrt(3))
    assert noisy["significant"] and noisy["beyond_control"] is False and noisy["verdict"] == "none"
    # a quiet control: both tests pass
    quiet = paired_comparison(d, control_diffs=[0.001, -0.002, 0.0005])
    assert quiet["beyond_control"] and quiet["verdict"] == "higher"
    # a mean of exactly two standard errors fails with three seeds
    m = 2 / math.sqrt(3)  # sd 1, standard error 1/sqrt(3): the mean is two standard errors
    two_se = paired_comparison([m - 1, m, m + 1])
    assert two_se["mean"] / (two_se["sd"] / math.sqrt(3)) == pytest.approx(2.0)
    assert abs(two_se["mean"]) < two_se["half_width"] and two_se["verdict"] == "none"
    assert paired_comparison([0.03])["verdict"] == "too few seeds"


@pytest.mark.parametrize("control_diffs", [[0.0, 0.0, 0.0], [2e-6, -1e-6, 0.0]])
def test_a_control_that_did_not_drift_is_no_yardstick(control_diffs):
    d = [0.020, 0.025, 0.030]  # the t-test alone would call this "higher"
    c = paired_comparison(d, control_diffs=control_diffs)
    assert c["significant"] and c["control_rms"] < 1e-4
    assert c["beyond_control"] is None and c["verdict"] == "no yardstick"
    assert "did not drift apart" in c["note"]
    # a threshold of 0 takes any spread at face value (and the t-test then decides)
    assert paired_comparison(d, control_diffs=control_diffs, min_control_rms=0.0)["verdict"] == "higher"
    # with too few seeds there is no verdict either way
    assert paired_comparison([0.03], control_diffs=control_diffs)["verdict"] == "too few seeds"


# ----------------------------------------------------------------------------- logging


class FakeTrainer:
    """Just what EvalLog reads: a step and a history."""

    def __init__(self) -> None:
        self.step = 0
        self.history = {"step": [], "loss": [], "examples": [], "examples_per_s": [], "time": []}

    def take_steps(self, seconds_per_step: list[float], examples: int = 4) -> None:
        for seconds in seconds_per_step:
            self.step += 1
            h = self.history
            h["step"].append(self.step)
            h["loss"].append(3.0)
            h["examples"].append((h["examples"][-1] if h["examples"] else 0) + examples)
            h["examples_per_s"].append(examples / seconds)
            h["time"].append((h["time"][-1] if h["time"] else 0.0) + seconds)


def test_eval_log_reports_tokens_per_s_since_the_last_line_and_mfu():
    lines = []
    log = EvalLog("adamw seed 0", total_steps=8, seq_len=100, world=2, flops_per_tok=1e9,
                  device_name="NVIDIA H100 80GB HBM3", print_fn=lines.append)
    trainer = FakeTrainer()
    log.begin(trainer)
    trainer.take_steps([4.6, 0.5, 0.5, 0.5])  # the first step compiles: left out of the first line
    log.on_eval(trainer, 3.21)
    trainer.take_steps([1.0, 1.0, 1.0, 1.0])
    log.on_eval(trainer, 3.10)
    first, second = lines
    assert first.startswith("adamw seed 0 | step 4/8 | val loss 3.2100 | train loss 3.0000")
    # 3 steps of 4 examples per process, 2 processes, 100 tokens each, in 1.5 s
    assert "1,600 tokens/s" in first and f"MFU {1600 * 1e9 / (2 * 989.4e12):.1%}" in first
    assert "0:00:06 elapsed" in first and "about 0:00:02 to go" in first  # 0.5 s per step, 4 steps left
    assert "800 tokens/s" in second and "0:00:10 elapsed" in second and "to go" not in second
    # no known peak (a CPU): no MFU
    cpu_lines = []
    cpu_log = EvalLog("x", 4, 10, print_fn=cpu_lines.append)
    trainer = FakeTrainer()
    cpu_log.begin(trainer)
    trainer.take_steps([0.1])
    cpu_log.on_eval(trainer, 1.0)
    assert "400 tokens/s" in cpu_lines[0] and "MFU" not in cpu_lines[0]


def test_a_run_logs_every_evaluation_and_log_evals_does_not_block_a_resume(tmp_path, data_dir, capsys):
    cfg = tiny(tmp_path, data_dir, steps=6, eval_every=3, probe_every=None, log_evals=True)
    run_variant("adamw", 0, cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("adamw seed 0 |")]
    assert [line.split(" | ")[1] for line in lines] == ["step 3/6", "step 6/6"]
    assert all("tokens/s" in line and "MFU" not in line for line in lines)
    # logging is not a setting of the run: a finished run is read back with it off
    again = run_variant("adamw", 0, tiny(tmp_path, data_dir, steps=6, eval_every=3, probe_every=None,
                                         log_evals=False))
    assert again["steps"] == 6 and "adamw seed 0 |" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- a real kill


def test_sigkill_after_the_first_checkpoint_then_rerun_equals_an_uninterrupted_run(tmp_path, data_dir):
    """``python -m course_lib.capstone`` killed with SIGKILL (no clean-up at all), then run again."""
    settings = dict(steps=40, batch_size=4, eval_every=20, probe_every=20, checkpoint_every=5)
    straight_cfg = tiny(tmp_path / "straight", data_dir, **settings)
    straight = run_variant("layer_adaptive", 0, straight_cfg)

    out = tmp_path / "killed"
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**TINY, **settings}.items() if k != "steps"]
    command = [sys.executable, "-m", "course_lib.capstone", "--preset", "smoke", "--out-dir", str(out),
               "--data-dir", data_dir, "--variants", "layer_adaptive", "--seeds", "0", "--steps", "40",
               "--set", "max_bytes=300000", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COURSE_DEVICE": "cpu"}
    run_dir = out / "runs" / "layer_adaptive-seed0"
    log = tmp_path / "killed.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=sink, stderr=sink)
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoint.pt").exists():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "result.json").exists(), "the run finished before the kill: nothing was tested"
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    assert 5 <= killed_at < 40

    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed = json.loads((run_dir / "result.json").read_text())
    assert resumed["val_loss"] == straight["val_loss"]
    assert resumed["train_loss"] == straight["train_loss"]
    a = final_weights(straight_cfg, "layer_adaptive")
    b = final_weights(tiny(out, data_dir, **settings), "layer_adaptive")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_uses_bf16_compile_and_reports_mfu(tmp_path, data_dir):
    cfg = tiny(tmp_path, data_dir, steps=20, eval_every=10, compile=True)
    result = run_variant("layer_adaptive", 0, cfg)
    assert result["device"] == "cuda" and result["precision"] == "bf16" and result["compiled"]
    assert math.isfinite(result["val_loss"])
    if peak_bf16_tflops(result["device_name"]) is not None:
        assert 0 < result["mfu"] < 1
