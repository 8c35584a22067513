"""Action adapters, third-party checkers and wrappers, and the rollout command line."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import FrameStackObservation, RecordVideo, ResizeObservation

import minwm_env  # noqa: F401
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.envs.wrappers import DiffDriveActions, KeyboardActions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    from minwm_env.models import build_preset
    return build_preset("tiny")


def test_stable_baselines3_check_env(tiny):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    sb3_check_env(WorldModelEnv(model=tiny), warn=True)
    sb3_check_env(gym.make("minwm/GroundTruth-v0", width=32, height=32).unwrapped, warn=True)


def test_keyboard_actions_move_like_the_pose_string_keys():
    env = KeyboardActions(gym.make("minwm/GroundTruth-v0", width=32, height=32))
    env.reset(seed=0)
    _, _, _, _, info = env.step(env.keys.index("l"))
    yaw = np.degrees(np.arctan2(info["pose"][0, 2], info["pose"][2, 2]))
    assert yaw == pytest.approx(12.0)  # 4 latent frames x 3 degrees
    with pytest.raises(ValueError, match="outside"):
        env.step(99)
    with pytest.raises(TypeError, match="integer key"):
        env.step(0.5)
    with pytest.raises(ValueError, match="unknown keys"):
        KeyboardActions(gym.make("minwm/GroundTruth-v0", width=32, height=32), keys=("w", "fly"))


def test_diff_drive_actions(tiny):
    env = DiffDriveActions(WorldModelEnv(model=tiny))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0.1, 0.0], np.float32))
    np.testing.assert_allclose(info["pose"][:3, 3], [0, 0, 0.4], atol=1e-6)
    with pytest.raises(ValueError, match=r"exceeds bounds"):
        env.step(np.array([1.0, 0.0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))


def test_gymnasium_wrappers_work(tmp_path, tiny):
    env = WorldModelEnv(model=tiny, render_mode="rgb_array")
    env = ResizeObservation(env, (32, 32))
    env = FrameStackObservation(env, 3)
    env = RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda episode: True, disable_logger=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 32, 32, 3)
    for _ in range(2):
        obs, *_ = env.step(np.zeros(6, np.float32))
    env.close()
    assert list((tmp_path / "videos").glob("*.mp4"))


def test_contact_sheet_places_frames_in_rows():
    from minwm_env.rollout import contact_sheet
    rows = [np.random.default_rng(i).integers(0, 255, (3, 4, 5, 3), dtype=np.uint8) for i in range(2)]
    sheet = contact_sheet(rows, gap=1)
    assert sheet.shape == (2 * 4 + 1, 3 * 5 + 2, 3)
    np.testing.assert_array_equal(sheet[5:9, 12:17], rows[1][2])
    np.testing.assert_array_equal(sheet[0:4, 6:11], rows[0][1])
    assert (sheet[4] == 255).all() and (sheet[:, 5] == 255).all()


def test_rollout_command_writes_video_and_log(tmp_path):
    out = tmp_path / "rollout"
    proc = subprocess.run([sys.executable, "-m", "minwm_env.rollout", "--pose-string", "w*4,l*3",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    log = json.loads((out / "rollout.json").read_text())
    assert log["pose_string"] == "w*4,l*3,stay*1" and len(log["steps"]) == 2
    assert all("psnr_last_frame" in s for s in log["steps"])
    import imageio.v3 as iio
    video = iio.imread(out / "rollout.mp4")
    assert video.shape == (33, 64, 128, 3)  # model | truth side by side
    sheet = iio.imread(out / "steps.png")  # start + 2 steps in a row, model above truth, 2 px gaps
    assert sheet.shape == (64 * 2 + 2, 64 * 3 + 2 * 2, 3)
    assert np.abs(sheet[-64:, :64].astype(np.float64) - video[0, :, 64:]).mean() < 8  # truth's start (mp4 lossy)
    bad = subprocess.run([sys.executable, "-m", "minwm_env.rollout", "--pose-string", "w*4,x*2", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "unknown key 'x'" in bad.stderr
