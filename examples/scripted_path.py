"""A scripted camera path through the world model and the ground truth, compared frame by frame.

    python examples/scripted_path.py
"""

import gymnasium as gym
import numpy as np

import minwm_env  # noqa: F401


def main() -> None:
    world = gym.make("minwm/World-v0", model="tiny")
    truth = gym.make("minwm/GroundTruth-v0", width=64, height=64)
    obs, info = world.reset(seed=0)  # the start view is rendered from the ground-truth world
    truth.reset(options={"start_pose": info["start_world_pose"]})
    forward, turn_right = [0, 0, 0.08, 0, 0, 0], [0, 0, 0, 3.0, 0, 0]
    for name, action in [("forward", forward)] * 3 + [("turn right", turn_right)] * 3:
        action = np.array(action, dtype=np.float32)
        model_obs, *_ = world.step(action)
        true_obs, *_, true_info = truth.step(action)
        error = np.abs(model_obs.astype(int) - true_obs.astype(int)).mean()
        print(f"{name:10s} camera {true_info['pose'][:3, 3].round(2)}  mean |model - truth| = {error:.1f}")


if __name__ == "__main__":
    main()
