"""Step time of the README's env snippet (or of training), alone and beside another CPU-bound process.

    python benchmarks/step_time.py --steps 30 --rounds 2
    python benchmarks/step_time.py --num-envs 8                      # the native vector env
    python benchmarks/step_time.py --train-data data/world --steps 10 # minwm-train stage0 --preset default
    python benchmarks/step_time.py --extra "one-thread:MINWM_THREADS=off,OMP_NUM_THREADS=1"

Each configuration runs in a fresh Python process (OpenMP reads its settings once, when torch
loads, so they cannot be switched inside one process). The env snippet: ``gym.make(
"minwm/World-v0")``, ``reset(seed=0)``, ``--warmup`` untimed steps, then ``--steps`` timed steps
forward. Training: ``minwm-train stage0 --preset default`` on ``--train-data``, the engine's
``time/step_s`` of the steps after the warm-up.

Configurations: ``before``, the package without its thread settings (``MINWM_THREADS=off``:
torch's defaults, as before they existed); ``after``, the package as shipped; ``after, torch
first``, the snippet with ``import torch`` before ``import minwm_env`` (too late for OpenMP's
settings: the package's fallback). Loads: ``none``; ``torch``, a process multiplying matrices
in a loop on torch's default threads (a neighbour's training or test run); ``numpy``, the same
on 2 BLAS threads. Every round runs every load x configuration in turn, so drift in what else
runs on the machine hits all of them alike; ratios compare medians taken in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minwm_env.cli import arg, parse  # noqa: E402  (loads no torch)

TORCH_FIRST = "BENCH_IMPORT_TORCH_FIRST"  # read by the snippet only
CONFIGS = {"before": {"MINWM_THREADS": "off"}, "after": {}, "after, torch first": {TORCH_FIRST: "1"}}
# What a neighbour's process has: none of our settings, torch's and numpy's defaults.
CLEARED = ("MINWM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
           "OPENBLAS_NUM_THREADS", TORCH_FIRST)
LOADS = {
    "none": None,
    "torch": "import torch\na = torch.rand(256, 256)\nwhile True:\n    a = torch.tanh(a @ a)\n",
    "numpy": "import os\nos.environ['OPENBLAS_NUM_THREADS'] = '2'\nimport numpy as np\na = np.random.rand(384, 384)\n"
             "while True:\n    a = np.tanh(a @ a)\n",
}
SNIPPET = """
import json, os, time
if os.environ.get("{torch_first}"):
    import torch
import gymnasium as gym
import minwm_env  # noqa: F401
{make}
env.reset(seed=0)
action = {action}
for _ in range({warmup}):
    env.step(action)
times = []
for _ in range({steps}):
    began = time.perf_counter()
    env.step(action)
    times.append(time.perf_counter() - began)
print(json.dumps(times))
"""


@dataclass
class Args:
    """Time the README's env step (or training) before and after the package's thread settings, with and without load."""

    steps: int = arg(30, "timed steps per run")
    warmup: int = arg(3, "untimed steps first")
    rounds: int = arg(2, "rounds; each runs every load x configuration once")
    num_envs: int = arg(1, "1: the README's snippet; N: the same with the native vector env of N worlds")
    train_data: str | None = arg(None, "time minwm-train stage0 --preset default on this dataset instead of the env")
    load: tuple[str, ...] = arg(("none", "torch"), "loads beside the measured process", choices=list(LOADS))
    configs: tuple[str, ...] = arg(tuple(CONFIGS), "built-in configurations to run", choices=list(CONFIGS))
    extra: tuple[str, ...] = arg((), "more configurations, 'name:VAR=value,VAR=value' (environment variables)")
    json: str | None = arg(None, "write every step time and the summary to this JSON file")


def parse_extra(specs) -> dict[str, dict[str, str]]:
    configs = {}
    for spec in specs:
        name, _, assignments = spec.partition(":")
        if not name or "=" not in assignments:
            raise SystemExit(f"--extra {spec!r}: expected 'name:VAR=value,VAR=value'")
        configs[name] = dict(item.split("=", 1) for item in assignments.split(","))
    return configs


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, "PYTHONPATH": str(ROOT), **(extra or {})}


def time_env(config: dict[str, str], args: Args) -> list[float]:
    make, action = 'env = gym.make("minwm/World-v0")', "[0, 0, 0.08, 0, 0, 0]"
    if args.num_envs > 1:
        make = (f'env = gym.make_vec("minwm/World-v0", num_envs={args.num_envs}, '
                'vectorization_mode="vector_entry_point")')
        action = f"[[0, 0, 0.08, 0, 0, 0]] * {args.num_envs}"
    code = SNIPPET.format(torch_first=TORCH_FIRST, make=make, action=action, warmup=args.warmup, steps=args.steps)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_environment(config),
                          timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"the snippet failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_training(config: dict[str, str], args: Args) -> list[float]:
    out = Path(tempfile.mkdtemp(prefix="step_time_train_"))
    try:
        command = [sys.executable, "-m", "minwm_train.cli", "stage0", "--preset", "default", "--data", args.train_data,
                   "--out", str(out), "--steps", str(args.warmup + args.steps), "--checkpoint-every", "100000",
                   "--log-every", "1"]
        proc = subprocess.run(command, capture_output=True, text=True, env=clean_environment(config), timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
        logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [log["time/step_s"] for log in logs[args.warmup:]]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def start_load(name: str) -> subprocess.Popen | None:
    if LOADS[name] is None:
        return None
    load = subprocess.Popen([sys.executable, "-c", LOADS[name]], env=clean_environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)  # imported and multiplying
    return load


def main(argv=None) -> None:
    args = parse(Args, argv)
    configs = {**{name: CONFIGS[name] for name in args.configs}, **parse_extra(args.extra)}
    measure = time_training if args.train_data else time_env
    runs = {(load, name): [] for load in args.load for name in configs}
    load_average = [os.getloadavg()]
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for _ in range(args.rounds):
        for load in args.load:
            process = start_load(load)
            try:
                for name, config in configs.items():
                    runs[load, name].append(measure(config, args))
            finally:
                if process is not None:
                    process.kill()
                    process.wait()
    load_average.append(os.getloadavg())
    summary = {f"{load}/{name}": {"median_s": statistics.median(statistics.median(t) for t in times),
                                  "max_s": max(max(t) for t in times)}
               for (load, name), times in runs.items()}
    workload = f"minwm-train stage0 --preset default on {args.train_data}" if args.train_data else (
        "README env snippet" if args.num_envs == 1 else f"vector env of {args.num_envs}")
    print(f"{began}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores; 1-minute load average "
          f"before/after: {load_average[0][0]:.2f} / {load_average[1][0]:.2f}")
    print(f"{workload}: {args.rounds} rounds x {args.steps} timed steps (median of the rounds' medians, max of all)")
    print("| load | configuration | median step | max step | before / this (median) |")
    print("|---|---|---:|---:|---:|")
    for load in args.load:
        reference = summary.get(f"{load}/before", {}).get("median_s")
        for name in configs:
            row = summary[f"{load}/{name}"]
            ratio = f"{reference / row['median_s']:.1f}x" if reference else "-"
            print(f"| {load} | {name} | {row['median_s']:.3f} s | {row['max_s']:.3f} s | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": began, "workload": workload, "load_average": load_average,
                                               "args": vars(args), "configs": configs, "summary": summary,
                                               "step_s": {f"{k[0]}/{k[1]}": v for k, v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
