"""The ground-truth world: deterministic rendering, exact geometry, a well-behaved Gymnasium env."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import minwm_env  # noqa: F401  (registers the envs)
from minwm_env import camera
from minwm_env.pose_strings import parse_pose_string
from minwm_env.world.paths import PATH_KINDS, random_path, rgb_frame_poses
from minwm_env.world.renderer import WorldRenderer, look_pose
from minwm_env.world.scenes import SCENE_NAMES, make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene("gallery", 0)


def test_rendering_is_deterministic_across_renderers(scene):
    poses = random_path(scene, 9, "mixed", seed=3).world_c2w()
    a = WorldRenderer(scene, 48, 32).render_many(poses)
    b = WorldRenderer(scene, 48, 32).render_many(poses)
    assert a.shape == (9, 32, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.std() > 10  # not a blank image


def test_scenes_are_deterministic_and_distinct():
    assert make_scene("room", 1).xml == make_scene("room", 1).xml
    assert make_scene("room", 1).xml != make_scene("room", 2).xml
    views = [WorldRenderer(make_scene(n, 0), 32, 32).render(look_pose(0, 0, 0.5, 30)) for n in SCENE_NAMES]
    assert all(not np.array_equal(views[0], v) for v in views[1:])


def test_out_and_back_returns_exactly_the_first_frame(scene):
    renderer = WorldRenderer(scene, 64, 64)
    for seed in range(3):
        path = random_path(scene, 41, "out_and_back", seed=seed)
        frames = renderer.render_many(path.world_c2w())
        assert max(np.abs(frames[k].astype(int) - frames[0]).mean() for k in range(41)) > 5  # it did go somewhere
        assert np.array_equal(frames[0], frames[-1]), path.pose_string


def test_full_turn_returns_to_the_start_view(scene):
    renderer = WorldRenderer(scene, 64, 64)
    start = look_pose(0.2, -0.3, 0.5, 17.0)
    turned = start @ camera.compose_deltas(parse_pose_string("l*120"))[-1].numpy()
    np.testing.assert_allclose(turned, start, atol=1e-12)
    assert np.array_equal(renderer.render(start), renderer.render(turned))
    half = start @ camera.compose_deltas(parse_pose_string("l*60"))[-1].numpy()
    assert not np.array_equal(renderer.render(start), renderer.render(half))


@pytest.mark.parametrize("kind", PATH_KINDS)
def test_paths_stay_in_free_space_and_match_their_pose_string(scene, kind):
    for seed in range(3):
        path = random_path(scene, 33, kind, seed=seed)
        assert path.deltas.shape == (32, 6)
        positions = path.world_c2w()[:, :3, 3]
        assert min(scene.clearance(x, y) for x, y, _ in positions) >= 0.3 - 1e-9
        torch.testing.assert_close(parse_pose_string(path.pose_string), path.deltas)
    assert random_path(scene, 33, kind, seed=5).pose_string == random_path(scene, 33, kind, seed=5).pose_string


def test_rgb_frame_poses_hit_the_latent_poses():
    relative = camera.compose_deltas(parse_pose_string("w*2,l*2"))
    rgb = rgb_frame_poses(relative)
    assert rgb.shape == (17, 4, 4)
    torch.testing.assert_close(rgb[::4], relative)
    torch.testing.assert_close(rgb[2][:3, 3], torch.tensor([0, 0, 0.04], dtype=torch.float64))


def test_gymnasium_check_env_passes():
    env = gym.make("minwm/GroundTruth-v0", width=32, height=32)
    check_env(env.unwrapped, skip_render_check=False)
    chunk_env = gym.make("minwm/GroundTruth-v0", width=32, height=32, obs_mode="chunk")
    check_env(chunk_env.unwrapped)


def test_env_steps_match_the_renderer_and_track_pose():
    env = gym.make("minwm/GroundTruth-v0", scene="gallery", width=32, height=32, obs_mode="chunk")
    obs, info = env.reset(seed=4)
    np.testing.assert_array_equal(info["pose"], np.eye(4))
    start = info["world_pose"]
    deltas = parse_pose_string("l*4").float()
    obs, reward, terminated, truncated, info = env.step(deltas.numpy())
    assert obs.shape == (16, 32, 32, 3) and reward == 0.0 and not terminated and not truncated
    expected = camera.compose_deltas(parse_pose_string("l*4"))[-1].numpy()
    np.testing.assert_allclose(info["pose"], expected, atol=1e-12)
    renderer = WorldRenderer(make_scene("gallery", 0), 32, 32)
    assert np.array_equal(obs[-1], renderer.render(start @ expected))
    assert info["frame_index"] == 16 and info["latent_poses"].shape == (4, 4, 4)


def test_same_seed_same_frames():
    def rollout(seed):
        env = gym.make("minwm/GroundTruth-v0", width=32, height=32)
        frames = [env.reset(seed=seed)[0]]
        for action in ([0, 0, 0.08, 0, 0, 0], [0, 0, 0, 3, 0, 0], [0.05, 0, 0, 0, 2, 0]):
            frames.append(env.step(np.array(action, dtype=np.float32))[0])
        return np.stack(frames)
    assert np.array_equal(rollout(2), rollout(2))
    assert not np.array_equal(rollout(2), rollout(3))


def test_walls_block_translation(scene):
    env = gym.make("minwm/GroundTruth-v0", scene=scene, width=32, height=32)
    wall_facing = look_pose(scene.half_extent - 0.5, 0.0, 0.5, 0.0)  # facing +x, wall 0.5 ahead
    env.reset(seed=0, options={"start_pose": wall_facing})
    collided = False
    for _ in range(5):
        _, _, _, _, info = env.step(np.array([0, 0, 0.16, 0, 0, 0], dtype=np.float32))
        collided |= info["collided"]
    assert collided
    assert info["world_pose"][0, 3] <= scene.half_extent - 0.2 + 1e-9


def test_bad_input_raises_and_env_keeps_working():
    env = gym.make("minwm/GroundTruth-v0", width=32, height=32)
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(np.zeros(6, dtype=np.float32))
    env.reset(seed=0)
    for bad, error in [(np.full(6, np.nan, dtype=np.float32), ValueError), (np.zeros(5, dtype=np.float32), ValueError),
                       (np.zeros((3, 6), dtype=np.float32), ValueError), ("forward", TypeError),
                       (np.array([0, 0, 5, 0, 0, 0], dtype=np.float32), ValueError)]:
        with pytest.raises(error):
            env.step(bad)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"imgae": None})
    obs, *_ = env.step(np.zeros(6, dtype=np.float32))
    assert obs.shape == (32, 32, 3)


def test_user_mjcf_scene(tmp_path):
    path = tmp_path / "my_scene.xml"
    path.write_text("<mujoco><worldbody><light pos='0 0 3'/><geom type='plane' size='4 4 .1' rgba='.4 .5 .4 1'/>"
                    "<geom type='box' pos='0 2 .5' size='.4 .4 .5' rgba='1 0 0 1'/></worldbody></mujoco>")
    env = gym.make("minwm/GroundTruth-v0", mjcf=str(path), width=32, height=32)
    obs, _ = env.reset(seed=0)
    assert obs[:, :, 0].mean() > obs[:, :, 1].mean()  # the red box is straight ahead
    with pytest.raises(FileNotFoundError, match="nowhere.xml"):
        gym.make("minwm/GroundTruth-v0", mjcf=str(tmp_path / "nowhere.xml"))
    (tmp_path / "bad.xml").write_text("<mujoco><worldbody><geom type='nonsense'/></worldbody></mujoco>")
    with pytest.raises(ValueError, match="bad.xml"):
        gym.make("minwm/GroundTruth-v0", mjcf=str(tmp_path / "bad.xml"))
