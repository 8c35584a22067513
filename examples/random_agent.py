"""A random agent in the world model: the smallest RL-style loop.

    python examples/random_agent.py --steps 10
"""

from dataclasses import dataclass

import gymnasium as gym

import minwm_env  # noqa: F401  (registers minwm/World-v0)
from minwm_env.cli import arg, parse


@dataclass
class Args:
    """Step minwm/World-v0 with random camera actions."""

    model: str = arg("tiny", "preset name or model folder")
    steps: int = arg(10, "environment steps")
    seed: int = arg(0, "seed")


def main() -> None:
    args = parse(Args)
    env = gym.make("minwm/World-v0", model=args.model)
    env.action_space.seed(args.seed)
    obs, info = env.reset(seed=args.seed)
    for t in range(args.steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        print(f"step {t}: frame {info['frame_index']}, camera at {info['pose'][:3, 3].round(3)}, "
              f"{float(info['latency_s']) * 1000:.0f} ms")
        if terminated or truncated:
            obs, info = env.reset()
    env.close()


if __name__ == "__main__":
    main()
