"""Bring your own robot, end to end at tiny size: render the arm world, train a conditioner for
its joint commands on the frozen tiny backbone, step the env in that action space, evaluate
against the arm's truth. Not that it learns (a few steps): that every link of the chain holds."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import minwm_env  # noqa: F401
from minwm_env.data import EncodeConfig, RenderConfig, encode_dataset, render_dataset
from minwm_env.eval.arm import ColourClassifier, iou, labels_from_masks
from minwm_env.eval.cli import main as eval_main
from minwm_env.models import load_model
from minwm_train.cli import train
from minwm_train.config import preset_config


@pytest.fixture(scope="module")
def arm_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("arm")
    data = render_dataset(root / "data", RenderConfig(world="arm", num_clips=3, num_frames=17), progress=False)
    encode_dataset(data, load_model("tiny").codec, EncodeConfig(), progress=False)
    train(preset_config("tiny", "stage0", data=str(data), out=str(root / "stage0"), actions="pusher-arm",
                        camera="none", train_only="conditioning", steps=2, checkpoint_every=2), "cpu")
    return root / "stage0" / "model"


def test_the_env_takes_the_arm_action_space_and_starts_in_the_arm_world(arm_model):
    env = gym.make("minwm/World-v0", model=str(arm_model), num_threads=1)
    assert env.action_space.shape == (4,) and float(env.action_space.high[0]) == 8.0
    truth = gym.make("minwm/ArmTruth-v0")
    start, _ = env.reset(seed=3)
    truth_start, _ = truth.reset(seed=3)
    np.testing.assert_array_equal(start, truth_start)  # the same arm world, the same seed
    obs, *_ = env.step(np.array([8.0, -8.0, 0.0, 4.0], dtype=np.float32))
    assert obs.shape == start.shape
    with pytest.raises(ValueError, match="must have shape \\(4,\\)"):
        env.step(np.zeros(6, dtype=np.float32))  # camera deltas are not this model's actions
    env.close()
    truth.close()
    with pytest.raises(ValueError, match="action spaces differ.*pusher-arm.*camera"):
        gym.make("minwm/World-v0", model=str(arm_model), action_spec="camera")


def test_eval_against_the_arm_truth_reports_what_applies(arm_model, tmp_path, capsys):
    out = tmp_path / "eval"
    eval_main(["--model", str(arm_model), "--against", "arm-truth", "--out", str(out), "--quick", "--chunks", "2",
               "--arm-sequences", "2", "--num-threads", "1"])
    results = json.loads((out / "metrics.json").read_text())
    summary = results["summary"]
    for key in ("arm/psnr_db", "arm/shuffled_psnr_db", "arm/repeat_start_psnr_db", "arm/true_minus_shuffled_db",
                "arm/mask_iou_h2", "arm/repeat_start_mask_iou_h2", "arm/mask_iou_ceiling_h2",
                "arm/permuted_psnr_db", "arm/truth_shuffled_psnr_db"):
        assert isinstance(summary[key], float), key
    assert summary["adherence/rotation_error_deg"] == "n/a" and summary["revisit"] == "n/a"
    assert len(results["psnr_db_per_horizon"]["true"]) == 2 and len(results["sequences"]) == 2
    # the classifier reads the truth's own arm well (its ceiling), and the start frame's arm
    # overlaps the truth's one step later less than perfectly only because the arm moved
    assert summary["arm/mask_iou_ceiling_h2"] > 0.6
    report = (out / "report.md").read_text()
    assert "![arm](arm.png)" in report and "n/a" in report
    assert (out / "arm.png").read_bytes()[:4] == b"\x89PNG" and (out / "arm_strips.png").stat().st_size > 1000
    assert "arm/psnr_db" in capsys.readouterr().out


def test_colour_classifier_separates_classes_it_was_fitted_on():
    rng = np.random.default_rng(0)
    frames = np.zeros((2, 16, 16, 3), np.uint8) + np.array([60, 70, 90], np.uint8)  # background
    arm = np.zeros((2, 16, 16), bool)
    arm[:, 4:10, 6:9] = True
    obj = np.zeros((2, 16, 16), bool)
    obj[:, 12:14, 12:14] = True
    frames[arm] = (240, 160, 20)
    frames[obj] = (220, 20, 20)
    noisy = np.clip(frames + rng.integers(-8, 9, frames.shape), 0, 255).astype(np.uint8)
    classifier = ColourClassifier(noisy, labels_from_masks(arm, obj), per_class=2)
    labels = classifier(noisy)
    assert iou(labels == 1, arm) == 1.0 and iou(labels == 2, obj) == 1.0
    assert iou(classifier(np.roll(noisy, 3, axis=2)) == 1, arm) < 0.6  # a moved arm is not where it was


def test_bad_eval_options_for_the_arm_are_refused(arm_model, tmp_path):
    with pytest.raises(SystemExit, match="give --model"):
        eval_main(["--model", "ground-truth", "--against", "arm-truth", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="action spaces differ.*camera.*pusher-arm"):
        eval_main(["--model", "tiny", "--against", "arm-truth", "--out", str(tmp_path), "--quick"])


def test_the_puck_is_looked_for_near_its_true_path():
    from minwm_env.eval.arm import near_segment

    mask = near_segment((16, 16), np.array([2.0, 2.0]), np.array([10.0, 2.0]), 1.5)
    assert mask[2, 2] and mask[2, 10] and mask[3, 6] and not mask[5, 6] and not mask[2, 13]
    assert not near_segment((4, 4), np.array([np.nan, 1.0]), np.array([1.0, 1.0]), 2).any()
