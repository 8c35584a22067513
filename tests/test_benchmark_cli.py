"""Smoke tests of benchmark command lines (latency, issue 18's bars), on a tiny budget."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_latency_benchmark_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--dtype", "float8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "float8" in proc.stderr


def test_default_bars_writes_its_table(tmp_path):
    """benchmarks/default_bars.py at a tiny size: every bar row is in bars.md and bars.json, the
    curves span the horizon asked for, and the shipped model beats repeating its start frame."""
    out = tmp_path / "bars"
    subprocess.run([sys.executable, "benchmarks/default_bars.py", "--models", "minwm-default", "--layouts", "room:100",
                    "--steps", "2", "--paths", "1", "--idle-steps", "2", "--fd-paths", "4", "--out", str(out)],
                   check=True, capture_output=True, cwd=ROOT)
    report = json.loads((out / "bars.json").read_text())["models"]["minwm-default"]
    assert len(report["pooled"]["psnr_db_curve"]["model"]) == 2
    rows = {row[0]: row for row in report["bars"]}
    assert len(rows) == 9 and all(name in (out / "bars.md").read_text() for name in rows)
    assert rows["PSNR − repeat-start's, worst horizon, dB"][3] is True


def test_gpu_suite_runs_its_cpu_path_and_writes_one_json(tmp_path):
    """benchmarks/gpu_suite.sh, the one script a short GPU lease runs, through its CPU path at
    tiny size: every step exits 0 and its figures land in suite.json."""
    import os
    out = tmp_path / "suite"
    env = {**os.environ, "MINWM_SUITE": "cpu", "MINWM_PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out)], capture_output=True,
                          text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    suite = json.loads((out / "suite.json").read_text())
    assert suite["mode"] == "cpu" and set(suite["steps"]) == {"latency_wan", "latency_wan_compiled", "fold_wan",
                                                              "flops", "memory_plan"}
    compiled = suite["steps"]["latency_wan_compiled"]["result"]
    assert compiled["compile"] == "aot_eager" and compiled["frames_per_s"] > 0
    assert all(step["exit"] == 0 and step["result"] for step in suite["steps"].values())
    fold = suite["steps"]["fold_wan"]["result"]
    # the fold saves one backbone forward per steady chunk at the same FLOPs (within the mask's bookkeeping)
    assert fold["separate"]["backbone_forwards_per_chunk"] - fold["folded"]["backbone_forwards_per_chunk"] == 1
    assert abs(fold["folded"]["flops_per_chunk"] / fold["separate"]["flops_per_chunk"] - 1) < 0.25
    latency = suite["steps"]["latency_wan"]["result"]
    for key in ["speedup_bidir_over_ar_fewstep", "chunk200_over_chunk5", "frames_per_s", "first_chunk_s",
                "peak_memory_gb"]:
        assert key in latency
    # A wall-clock ratio at tiny size on a shared CPU is not a test figure (it measured 0.90 once
    # beside other work): that it is computed and positive is; the FLOP ratio below is the claim.
    assert latency["speedup_bidir_over_ar_fewstep"] > 0 and latency["frames_per_s"] > 0
    assert "speed-up (a)/(c)" in (out / "latency_wan.log").read_text()
    wan = suite["steps"]["flops"]["result"]["results"]["wan21-1.3b"]
    # 50 CFG steps over 21 latent frames against 4 steps over a 4-frame chunk, at 480x832
    assert wan["parameters"] > 1e9 and 150 < wan["ratio_bidir_over_ar_fewstep"] < 600
    split = latency["split_per_chunk_s"]
    assert split["transformer_s"] > 0 and split["vae_decode_s"] > 0
    plan = suite["steps"]["memory_plan"]["result"]["plan"]
    assert plan["cache_bytes"] == plan["cache_formula_bytes"] and plan["total_bytes"] > 0


def test_five_looks_draws_every_model_above_the_truth(tmp_path):
    """benchmarks/five_looks.py: one picture per look, a row per model and the truth's last
    (64-px frames at scale 1, 2-px gaps), and each model's last-frame PSNR in looks.md; the
    shipped model holds still for 100 idle steps as the truth does."""
    import imageio.v3 as iio
    out = tmp_path / "looks"
    proc = subprocess.run([sys.executable, "benchmarks/five_looks.py", "--models", "minwm-default", "default",
                           "--looks", "turn120", "idle", "--scale", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    turn, idle = iio.imread(out / "turn120.png"), iio.imread(out / "idle.png")
    assert turn.shape == (3 * 64 + 2 * 2, 11 * 64 + 10 * 2, 3)  # start + ten steps, two models and the truth
    assert idle.shape == (3 * 64 + 2 * 2, 8 * 64 + 7 * 2, 3)  # steps 0, 1, 5, 10, 25, 50, 75, 100
    rows = {line.split("|")[1].strip(): line for line in (out / "looks.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| look")}
    assert set(rows) == {"turn120", "idle"}
    assert float(rows["idle"].split("|")[2]) >= 30.0


def test_depth_warp_probe_scores_orbits_and_coverage(tmp_path):
    """benchmarks/depth_warp_probe.py --kinds orbit: per-horizon scores of the three warps and
    the coverage of the start frame's seen pixels by both depth splats; the true depth covers
    almost all of them and warps closer than one plane."""
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "benchmarks/depth_warp_probe.py", "--layouts", "room:100", "--kinds", "orbit",
                           "--paths", "1", "--latent-frames", "5", "--depth-model", "minwm_env/assets/minwm-default/depth",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert all(len(result[name]) == 4 for name in ("plane", "truth_depth", "model_depth"))
    assert min(result["truth_depth_coverage_of_seen"]) > 0.95
    assert all(0 < c <= 1 for c in result["model_depth_coverage_of_seen"])
    assert result["truth_depth_pooled"] > result["plane_pooled"]
    bad = subprocess.run([sys.executable, "benchmarks/depth_warp_probe.py", "--kinds", "spiral"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "spiral" in bad.stderr


def test_detail_split_scores_models_and_the_true_depth_warp(tmp_path):
    """benchmarks/detail_split.py at a tiny size: per-horizon detail ratios of the model and of
    the start frame warped once through the true depth, on all, seen and new pixels; the first
    horizon's seen share is a fraction, and bad sizes are refused."""
    out = tmp_path / "split.json"
    proc = subprocess.run([sys.executable, "benchmarks/detail_split.py", "--layouts", "room:100", "--steps", "2",
                           "--paths", "1", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["detail_ratio"]) == {"minwm-default", "true-depth warp"}
    for parts in result["detail_ratio"].values():
        assert set(parts) == {"all", "seen", "new"} and all(len(v) == 2 for v in parts.values())
    assert 0 < result["seen_share"][0] <= 1
    # warped once through the true depth, the seen pixels keep most of the truth's detail one step on
    assert result["detail_ratio"]["true-depth warp"]["seen"][0] > 0.5
    bad = subprocess.run([sys.executable, "benchmarks/detail_split.py", "--steps", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "--steps" in bad.stderr
