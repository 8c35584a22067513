"""Action spaces named on the command line: spec files through ingest, encode, training and the env.

A robot with a fixed camera and a 2-component gripper command (a spec file, not a named space):
its videos and actions are ingested with ``--action-spec FILE``, encoded, a conditioner is
trained on the frozen tiny backbone, and the env takes its action space from the model.
Mismatches between data, model and command line raise errors naming both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import minwm_env  # noqa: F401  (registers the envs)
from minwm_env.conditioning import (ActionSpec, ConditioningConfig, camera_action_spec, check_same_space,
                                     load_action_spec)
from minwm_env.data import ClipDataset, EncodeConfig, IngestConfig, encode_dataset, ingest_folder
from minwm_env.data.format import SPEC_FILE, dataset_action_spec, read_manifest, write_video
from minwm_env.models import load_model
from minwm_train.cli import train
from minwm_train.config import preset_config
from minwm_train.data import LatentClips

GRIPPER = {"name": "gripper", "names": ["lift", "close"], "low": [-1.0, 0.0], "high": [1.0, 1.0],
           "units": ["cm", "fraction"], "description": "a toy gripper: lift and close"}
NUM_FRAMES = 17  # 5 latent frames: the tiny preset's clip length


def write_spec(folder: Path, data: dict = GRIPPER, name: str = "gripper.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def write_robot_videos(src: Path, num_videos: int = 2, actions_scale: float = 1.0, dim: int = 2) -> Path:
    """Videos from a fixed camera whose brightness follows the 'lift' action, with identity poses."""
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for v in range(num_videos):
        actions = np.stack([rng.uniform(-1, 1, 4), rng.uniform(0, 1, 4)], axis=1)[:, :dim] * actions_scale
        level = np.concatenate([[0.5], 0.5 + 0.1 * np.cumsum(np.repeat(actions[:, 0], 4))])
        frames = (np.clip(level, 0, 1)[:, None, None, None] * 255 * np.ones((1, 64, 64, 3))).astype(np.uint8)
        frames[:, 8:16, 8 + 4 * v:16 + 4 * v] = 255
        write_video(src / f"robot{v}.mp4", frames, 16.0)
        pose = {"c2w": np.broadcast_to(np.eye(4), (NUM_FRAMES, 4, 4)).tolist(),
                "intrinsics": [0.8, 0.8, 0.5, 0.5], "actions": actions.tolist()}
        (src / f"robot{v}.json").write_text(json.dumps(pose))
    return src


# -- spec files ---------------------------------------------------------------------------------

def test_spec_file_round_trip_and_names(tmp_path):
    spec = load_action_spec(str(write_spec(tmp_path)))
    assert spec.name == "gripper" and spec.names == ("lift", "close") and spec.dim == 2
    assert load_action_spec(str(spec.save(tmp_path / "again.json"))) == spec
    unnamed = {k: v for k, v in GRIPPER.items() if k != "name"}
    assert load_action_spec(str(write_spec(tmp_path, unnamed, "my_arm.json"))).name == "my_arm"
    assert load_action_spec("camera") == camera_action_spec() and load_action_spec("camera").name == "camera"
    assert load_action_spec("none") is None and load_action_spec(None) is None
    # a model saved before specs had names reads its camera spec back as "camera"
    stored = {k: v for k, v in camera_action_spec().to_dict().items() if k != "name"}
    assert ActionSpec.from_dict(stored).name == "camera"


@pytest.mark.parametrize("change, message", [
    ({"names": None}, "needs \\['names'\\]"),
    ({"low": [-1.0]}, "one entry per component"),
    ({"high": [1.0, -1.0]}, "low 0.0 must be below high -1.0"),
    ({"discrete": "yes"}, "'discrete' must be true or false"),
    ({"speed": 3}, "unknown ActionSpec fields \\['speed'\\]"),
    ({"low": "minus one"}, "'low' must be a list"),
])
def test_bad_spec_files_name_the_file_and_the_problem(tmp_path, change, message):
    data = {k: v for k, v in {**GRIPPER, **change}.items() if v is not None}
    path = write_spec(tmp_path, data)
    with pytest.raises(ValueError, match=message) as err:
        load_action_spec(str(path))
    assert str(path) in str(err.value)


def test_unknown_names_and_missing_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown action space 'gripperz'.*pusher-arm"):
        load_action_spec("gripperz")
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        load_action_spec(str(tmp_path / "nope.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_action_spec(str(tmp_path / "broken.json"))
    with pytest.raises(ValueError, match="the model has camera .* but the data has gripper"):
        check_same_space(camera_action_spec(), load_action_spec(str(write_spec(tmp_path))), "the model", "the data")


# -- ingest, encode, train, env -------------------------------------------------------------------

@pytest.fixture(scope="module")
def robot_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("robot")
    spec_path = write_spec(root)
    data = ingest_folder(write_robot_videos(root / "src"), root / "data",
                         IngestConfig(action_spec=str(spec_path)), progress=False)
    encode_dataset(data, load_model("tiny").codec, EncodeConfig(), progress=False)
    return root, data


def test_ingest_keeps_the_spec_with_the_data(robot_data):
    root, data = robot_data
    assert (data / SPEC_FILE).is_file()
    assert {clip.action_spec for clip in read_manifest(data).clips} == {"gripper"}
    assert dataset_action_spec(data) == load_action_spec(str(root / "gripper.json"))
    item = ClipDataset(data)[0]
    assert tuple(item["actions"].shape) == (4, 2)
    clips = LatentClips(data)
    assert clips.action_spec.name == "gripper" and tuple(clips.actions.shape[-1:]) == (2,)


def test_ingest_checks_actions_against_the_spec(tmp_path):
    spec_path = write_spec(tmp_path)
    out_of_bounds = write_robot_videos(tmp_path / "loud", num_videos=1, actions_scale=3.0)
    with pytest.raises(ValueError, match="robot0.json: its actions do not fit --action-spec gripper.*is outside its bounds"):
        ingest_folder(out_of_bounds, tmp_path / "out", IngestConfig(action_spec=str(spec_path)), progress=False)
    one_dim = write_robot_videos(tmp_path / "narrow", num_videos=1, dim=1)
    with pytest.raises(ValueError, match="robot0.json.*last dimension 2"):
        ingest_folder(one_dim, tmp_path / "out2", IngestConfig(action_spec=str(spec_path)), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()  # checked before writing


def test_a_conditioner_trains_on_a_frozen_backbone_and_the_env_takes_its_space(robot_data, tmp_path):
    root, data = robot_data
    spec = load_action_spec(str(root / "gripper.json"))
    out = tmp_path / "stage0"
    config = preset_config("tiny", "stage0", data=str(data), out=str(out), actions=str(root / "gripper.json"),
                           camera="none", train_only="conditioning", steps=3, checkpoint_every=3)
    train(config, "cpu")
    start = load_model("tiny", conditioning=None).backbone.state_dict()
    trained = load_model(str(out / "model"))
    assert trained.backbone.conditioning_config.action_spec == spec
    state = trained.backbone.state_dict()
    conditioning_keys = {k for k in state if k.startswith("conditioning.")}
    assert conditioning_keys and all(torch.equal(state[k], start[k]) for k in start)  # backbone frozen
    action_weights = [state[k] for k in conditioning_keys if "action" in k]
    assert any(w.abs().sum() > 0 for w in action_weights)  # the zero-initialised branch learned something

    env = gym.make("minwm/World-v0", model=str(out / "model"), num_threads=1)
    assert env.action_space.shape == (2,) and env.action_space.low.tolist() == [-1.0, 0.0]
    env.reset(seed=0, options={"image": ClipDataset(data)[0]["frames"][0].numpy()})
    obs, *_ = env.step(np.array([0.5, 1.0], dtype=np.float32))
    assert obs.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="'close' = 2 is outside its bounds"):
        env.step(np.array([0.0, 2.0], dtype=np.float32))
    env.close()
    with pytest.raises(ValueError, match="action spaces differ: the model .*gripper.*camera"):
        gym.make("minwm/World-v0", model=str(out / "model"), action_spec="camera")


def test_data_and_model_in_different_spaces_are_refused_naming_both(robot_data, tmp_path):
    _, data = robot_data
    config = preset_config("tiny", "stage0", data=str(data), out=str(tmp_path / "run"), actions="camera", steps=1)
    with pytest.raises(ValueError, match=r"the data in .*latents has gripper .* the stage's model .* has camera"):
        train(config, "cpu")
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ValueError, match="--camera prope .* needs camera-delta actions; --actions is gripper"):
        train(preset_config("tiny", "stage0", data=str(data), out=str(tmp_path / "run1"),
                            actions=str(data / SPEC_FILE), steps=1), "cpu")
    with pytest.raises(ValueError, match="--train-only conditioning, but the model tiny has no conditioning"):
        train(preset_config("tiny", "stage0", data=str(data), out=str(tmp_path / "run2"), camera="none",
                            actions="none", train_only="conditioning", steps=1), "cpu")


def test_a_trained_backbone_gets_a_new_action_branch_only_when_asked(robot_data, tmp_path):
    root, data = robot_data
    camera_model = tmp_path / "camera_model"
    load_model("tiny", conditioning=ConditioningConfig(action_spec=camera_action_spec())).save_pretrained(camera_model)
    config = dict(data=str(data), model=str(camera_model), actions=str(root / "gripper.json"), camera="none",
                  train_only="conditioning", steps=1, checkpoint_every=1)
    with pytest.raises(ValueError, match="--actions .*gripper.* the model .*camera_model .*camera.*--new-branches"):
        train(preset_config("tiny", "stage0", out=str(tmp_path / "refused"), **config), "cpu")
    train(preset_config("tiny", "stage0", out=str(tmp_path / "new"), new_branches=True, **config), "cpu")
    trained = load_model(str(tmp_path / "new" / "model"))
    assert trained.backbone.conditioning_config.action_spec.name == "gripper"
    original = load_model(str(camera_model)).backbone.state_dict()
    state = trained.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.items() if not k.startswith("conditioning."))
