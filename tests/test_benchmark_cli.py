"""Smoke tests of benchmark command lines (latency, issue 18's bars), on a tiny budget."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_latency_benchmark_writes_the_required_keys(tmp_path):
    out = tmp_path / "latency.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--preset", "tiny",
           "--early-chunk", "5", "--late-chunk", "9", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ["speedup_bidir_over_ar_fewstep", "chunk200_over_chunk5", "frames_per_s", "flops_ratio_full_size",
                "first_chunk_s", "peak_memory_gb"]:
        assert key in result
    # Few-step AR denoises one chunk in 4 evaluations; the baseline needs 50 × 2 over the clip.
    assert result["speedup_bidir_over_ar_fewstep"] > 1
    # 50 CFG steps over 20 latent frames against 4 steps over a 4-frame chunk, at 480x832.
    assert 150 < result["flops_ratio_full_size"] < 600
    assert "speed-up (a)/(c)" in proc.stdout


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
