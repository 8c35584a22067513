"""The arm world: a position-controlled Pusher arm seen by a fixed camera, its env and its datasets."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import minwm_env  # noqa: F401  (registers the envs)
from minwm_env.data import ClipDataset, read_clip_poses, read_manifest
from minwm_env.data.cli import main
from minwm_env.data.format import dataset_action_spec
from minwm_env.data.render import RenderConfig, plan_arm_clip, render_arm_clip
from minwm_env.world.arm import (ARM_ACTION_KINDS, ARM_ACTION_SPEC_NAME, ArmWorld, arm_action_spec, arm_actions,
                                 ready_joint_angles, scoop_ik, scoop_position)

SIZE = 32
RAISED = [30.0, 20.0, -90.0, -30.0]  # scoop well above the table, arm across the middle of the view
FAR_PUCK = [0.75, -0.15]  # out of the scoop's way for the poses these tests use


def make_env(**kwargs):
    return gym.make("minwm/ArmTruth-v0", width=SIZE, height=SIZE, **kwargs)


@pytest.fixture(scope="module")
def world():
    world = ArmWorld(SIZE, SIZE)
    yield world
    world.close()


def test_env_passes_gymnasium_checks_and_is_registered():
    env = make_env()
    assert env.spec.max_episode_steps == 200
    check_env(env.unwrapped)  # spaces, seeding, determinism of reset and step, render
    obs, info = env.reset(seed=0)
    assert obs.shape == (SIZE, SIZE, 3) and obs.dtype == np.uint8 and obs.std() > 10
    np.testing.assert_array_equal(info["pose"], np.eye(4))
    assert info["arm_mask"].any() and info["object_mask"].any()  # arm and puck both in view
    assert not (info["arm_mask"] & info["object_mask"]).any()
    obs, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert info["frames"].shape == (16, SIZE, SIZE, 3) and info["frame_index"] == 16
    assert info["latent_poses"].shape == (4, 4, 4) and not terminated and not truncated
    fx, fy, cx, cy = info["intrinsics"]
    assert fx == fy > 0 and cx == cy == 0.5
    chunk = make_env(obs_mode="chunk")
    assert chunk.reset(seed=0)[0].shape == (16, SIZE, SIZE, 3)
    assert chunk.step(np.zeros((4, 4), dtype=np.float32))[0].shape == (16, SIZE, SIZE, 3)


def test_same_seed_and_actions_give_identical_frames():
    actions = [np.array([8, -4, 6, -8], dtype=np.float32), np.array([[-8, 8, 0, 4]] * 4, dtype=np.float32)]
    runs = []
    for _ in range(2):
        env = make_env()
        env.reset(seed=7)
        runs.append([env.step(action)[4] for action in actions])
    for a, b in zip(*runs):
        assert np.array_equal(a["frames"], b["frames"])
        np.testing.assert_array_equal(a["joint_angles"], b["joint_angles"])
        np.testing.assert_array_equal(a["object_xy"], b["object_xy"])
    other = make_env()
    other.reset(seed=8)
    assert not np.array_equal(other.step(actions[0])[4]["frames"], runs[0][0]["frames"])


@pytest.mark.parametrize("joint", range(4))
def test_an_action_moves_the_arm_and_the_opposite_moves_it_back(joint):
    env = make_env()
    _, info = env.reset(seed=0, options={"joint_angles": RAISED, "object_xy": FAR_PUCK})
    start = info["arm_mask"]
    action = np.zeros(4, dtype=np.float32)
    action[joint] = 8.0 if joint == 0 else -8.0  # pan left; lift, elbow and wrist up
    _, _, _, _, moved = env.step(action)  # held for 4 latent frames: 32°
    np.testing.assert_allclose(moved["joint_angles"][joint] - RAISED[joint], 4 * action[joint], atol=1.0)
    changed = (moved["arm_mask"] ^ start).sum()
    assert changed >= 3, f"joint {joint}: 32° changed only {changed} arm pixels"
    _, _, _, _, back = env.step(-action)
    assert (back["arm_mask"] ^ start).sum() < changed / 2
    np.testing.assert_allclose(back["joint_angles"], RAISED, atol=1.0)
    np.testing.assert_allclose(back["object_xy"], FAR_PUCK, atol=1e-6)  # nothing touched the puck


def test_zero_actions_leave_the_frame_unchanged():
    env = make_env()
    obs, info = env.reset(seed=3)
    _, _, _, _, after = env.step(np.zeros(4, dtype=np.float32))
    assert np.abs(after["frames"].astype(int) - obs).max() <= 2
    np.testing.assert_allclose(after["joint_angles"], info["joint_angles"], atol=0.05)
    np.testing.assert_allclose(after["object_xy"], info["object_xy"], atol=1e-6)


def test_a_scripted_push_moves_the_puck():
    env = make_env()
    world = env.unwrapped.world
    rng = np.random.default_rng(5)
    puck = world.random_object_xy(rng)
    _, info = env.reset(seed=5, options={"joint_angles": ready_joint_angles(rng, puck), "object_xy": puck})
    rows = arm_actions("push", 13, seed=5, world=world)  # 12 rows: 3 steps of 4 latent frames
    assert rows.shape == (12, 4) and np.abs(rows).max() <= 8.0
    for k in range(3):
        _, _, _, _, info = env.step(rows[4 * k:4 * k + 4].astype(np.float32))
    assert np.linalg.norm(info["object_xy"] - puck) > 0.1
    assert info["object_mask"].any()  # still in view


def test_bad_actions_raise_and_leave_the_env_as_it_was():
    good = np.array([4, 4, -4, -4], dtype=np.float32)
    env, twin = make_env(), make_env()
    env.reset(seed=2)
    twin.reset(seed=2)
    env.step(good)
    twin.step(good)
    bad = [np.zeros(3, np.float32), np.zeros((4, 5), np.float32), np.zeros((3, 4), np.float32),
           np.array([9, 0, 0, 0], np.float32), np.array([0, 0, np.nan, 0], np.float32),
           np.array([[0, 0, 0, np.inf]] * 4, np.float32)]
    for action in bad:
        with pytest.raises(ValueError):
            env.step(action)
    a, b = env.step(-good)[4], twin.step(-good)[4]
    assert np.array_equal(a["frames"], b["frames"]) and a["frame_index"] == b["frame_index"] == 32


@pytest.mark.parametrize("options", [{"start_pose": np.eye(4)}, {"joint_angles": [0, 0, 0]},
                                     {"joint_angles": [0, 0, 10, 0]}, {"joint_angles": [0, np.nan, -10, 0]},
                                     {"object_xy": [0.5]}, {"object_xy": [9.0, 0.0]}, {"goal_xy": "here"}])
def test_bad_reset_options_raise(options):
    env = make_env()
    with pytest.raises(ValueError):
        env.reset(seed=0, options=options)


def test_action_kinds_are_seeded_bounded_and_shaped(world):
    world.reset(np.random.default_rng(1))
    spec = arm_action_spec()
    assert spec.dim == 4 and spec.names[0] == "d_shoulder_pan" and set(spec.units) == {"deg"}
    assert spec.name == ARM_ACTION_SPEC_NAME
    for kind in ARM_ACTION_KINDS:
        rows = arm_actions(kind, 9, seed=4, world=world)
        assert rows.shape == (8, 4) and np.isfinite(rows).all()
        assert np.array_equal(rows, arm_actions(kind, 9, seed=4, world=world))
        spec.validate(rows)  # within the bounds
        assert np.abs(rows).max() > 1.0, kind  # the arm does move
    with pytest.raises(ValueError, match="pass the world"):
        arm_actions("push", 9, seed=0)
    with pytest.raises(ValueError, match="kind"):
        arm_actions("wave", 9, seed=0)


def test_scoop_inverse_kinematics_matches_the_simulation(world):
    point = np.array([0.45, -0.25, -0.2])
    angles = scoop_ik(*point)
    np.testing.assert_allclose(scoop_position(angles), point, atol=1e-6)
    world.reset(np.random.default_rng(0), joint_angles=angles)
    np.testing.assert_allclose(world.scoop_position(), point, atol=1e-6)


def test_cli_renders_a_readable_arm_dataset(tmp_path):
    out = tmp_path / "arm"
    args = ["render", "--world", "arm", "--out", str(out), "--num-clips", "2", "--num-frames", "9",
            "--height", str(SIZE), "--width", str(SIZE), "--arm-kinds", "push", "sweep", "--no-progress"]
    main(args)
    manifest = read_manifest(out)
    assert [clip.action_spec for clip in manifest.clips] == [ARM_ACTION_SPEC_NAME] * 2
    assert manifest.origin["config"]["world"] == "arm" and "scenes" not in manifest.origin["config"]
    assert dataset_action_spec(out).same_space(arm_action_spec())  # the name resolves to the arm's space
    dataset = ClipDataset(out)
    config = RenderConfig(num_clips=2, num_frames=9, height=SIZE, width=SIZE, world="arm", arm_kinds=("push", "sweep"))
    for index in range(2):
        item, poses = dataset[index], read_clip_poses(out, f"{index:06d}")
        assert item["frames"].shape == (9, SIZE, SIZE, 3)
        assert item["actions"].shape == (2, arm_action_spec().dim)
        np.testing.assert_allclose(poses.c2w, np.broadcast_to(np.eye(4), (9, 4, 4)))
        assert poses.pose_string is None
        frames, truth = render_arm_clip(plan_arm_clip(config, index), config)  # clip i depends on (seed, i) only
        np.testing.assert_allclose(truth.actions, poses.actions)
        assert np.abs(item["frames"].numpy().astype(int) - frames).mean() < 3  # H.264 at quality 9
    main(args)  # the same settings continue the folder
    assert len(read_manifest(out).clips) == 2


def test_camera_world_datasets_record_the_same_settings_as_before():
    settings = RenderConfig().origin_settings()
    assert "world" not in settings and "arm_kinds" not in settings  # old camera datasets still continue
    assert "scenes" in settings and "num_clips" not in settings
    with pytest.raises(ValueError, match="world"):
        RenderConfig(world="moon")
    with pytest.raises(ValueError, match="arm_kinds"):
        RenderConfig(world="arm", arm_kinds=("wave",))
