"""Frames/s of one minwm/World-v0 env and of batched vector envs (tiny preset, CPU by default).

    python benchmarks/vector_env.py --num-envs 1 2 4 8 --steps 6

Each configuration is reset, warmed up for 2 steps, then timed over ``--steps`` steps of
random camera actions; decoded frames/s = envs × 16 frames × steps / time. Configurations are
timed in rounds (one step each in turn) so machine-load drift hits all of them alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import gymnasium as gym

import minwm_env  # noqa: F401
from minwm_env.cli import arg, parse
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.models import load_model
from minwm_env.profiling import now_utc


@dataclass
class Args:
    """Throughput of single and vector world-model envs."""

    model: str = arg("tiny", "preset name or model folder")
    num_envs: tuple[int, ...] = arg((1, 2, 4, 8), "vector env sizes")
    steps: int = arg(6, "timed steps per configuration")
    obs_mode: str = arg("frame", "observation mode", choices=["frame", "chunk", "latent"])
    device: str = arg("cpu", "torch device")
    json: str | None = arg(None, "write the figures to this JSON file")


def main(argv=None) -> None:
    args = parse(Args, argv)
    model = load_model(args.model, device=args.device)
    configs = {"single": WorldModelEnv(model=model, obs_mode=args.obs_mode)}
    for n in args.num_envs:
        configs[f"vector{n}"] = gym.make_vec("minwm/World-v0", num_envs=n, vectorization_mode="vector_entry_point",
                                             model=model, obs_mode=args.obs_mode)
    elapsed = {name: 0.0 for name in configs}
    for name, env in configs.items():
        env.reset(seed=0)
        for _ in range(2):
            env.step(env.action_space.sample())
    for _ in range(args.steps):
        for name, env in configs.items():
            action = env.action_space.sample()
            start = time.perf_counter()
            env.step(action)
            elapsed[name] += time.perf_counter() - start
    frames_per_step = 16
    result = {"date": now_utc(), "model": args.model, "obs_mode": args.obs_mode, "frames_per_s": {}}
    for name, env in configs.items():
        envs = getattr(env, "num_envs", 1)
        result["frames_per_s"][name] = envs * frames_per_step * args.steps / elapsed[name]
    base = result["frames_per_s"]["single"]
    for name, fps in result["frames_per_s"].items():
        print(f"{name:10s} {fps:8.1f} frames/s  ({fps / base:4.2f}x one env)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
