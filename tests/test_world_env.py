"""minwm/World-v0 and its vector env: Gymnasium-correct, deterministic, robust, batch-exact."""

import resource

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import minwm_env  # noqa: F401
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.models import build_preset
from conftest import randomize_

FORWARD = np.array([0, 0, 0.08, 0, 0, 0], dtype=np.float32)


@pytest.fixture(scope="module")
def model():
    m = build_preset("tiny", seed=0)
    randomize_(m.backbone, seed=1, scale=0.3)
    return m


def test_gymnasium_check_env(model):
    check_env(WorldModelEnv(model=model))
    check_env(WorldModelEnv(model=model, obs_mode="chunk"))
    check_env(WorldModelEnv(model=model, obs_mode="latent"))


def test_make_registers_and_steps():
    env = gym.make("minwm/World-v0", model="tiny")
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    obs, reward, terminated, truncated, info = env.step(FORWARD)
    assert reward == 0.0 and not terminated and not truncated
    assert info["frames"].shape == (16, 64, 64, 3) and info["frame_index"] == 16
    np.testing.assert_allclose(info["pose"][:3, 3], [0, 0, 0.32], atol=1e-6)
    assert env.spec.max_episode_steps == 200
    assert np.array_equal(env.render(), obs)


def test_same_seed_and_actions_give_identical_observations(model):
    def rollout(seed):
        env = WorldModelEnv(model=model, obs_mode="chunk")
        frames = [env.reset(seed=seed)[0]]
        for action in (FORWARD, np.array([0, 0, 0, 3, 0, 0], np.float32), np.tile(FORWARD, (4, 1))):
            frames.append(env.step(action)[0])
        return np.stack(frames)
    a, b, c = rollout(3), rollout(3), rollout(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_start_image_and_per_frame_actions(model):
    env = WorldModelEnv(model=model)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    obs, info = env.reset(seed=0, options={"image": image})
    assert np.array_equal(obs, image) and info["start_world_pose"] is None
    deltas = np.zeros((4, 6), np.float32)
    deltas[:, 3] = [0, 1, 2, 3]
    _, _, _, _, info = env.step(deltas)
    assert info["latent_poses"].shape == (4, 4, 4)


def test_reward_function_receives_observation_and_info(model):
    env = WorldModelEnv(model=model, reward_fn=lambda obs, info: float(obs.mean()) + info["frame_index"])
    env.reset(seed=0)
    obs, reward, *_ = env.step(FORWARD)
    assert reward == pytest.approx(float(obs.mean()) + 16)


def test_bad_input_raises_and_env_keeps_working(model):
    env = WorldModelEnv(model=model)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(FORWARD)
    env.reset(seed=1)
    expected_env = WorldModelEnv(model=model)
    expected_env.reset(seed=1)
    bad_actions = [(np.full(6, np.nan, np.float32), ValueError), (np.zeros(5, np.float32), ValueError),
                   (np.zeros((2, 6), np.float32), ValueError), (np.zeros(6, dtype=bool), TypeError),
                   ("w", TypeError), (np.array([0, 0, 9, 0, 0, 0], np.float32), ValueError)]
    for bad, error in bad_actions:
        with pytest.raises(error):
            env.step(bad)
    assert np.array_equal(env.step(FORWARD)[0], expected_env.step(FORWARD)[0])
    for options, error in [({"image": np.zeros((32, 32, 3), np.uint8)}, ValueError),
                           ({"image": np.zeros((64, 64, 3), np.float32)}, TypeError),
                           ({"image": "start.png"}, TypeError), ({"imgae": None}, ValueError),
                           ({"prompt": np.zeros((3, 7), np.float32)}, ValueError)]:
        with pytest.raises(error):
            env.reset(seed=2, options=options)
    assert np.array_equal(env.step(FORWARD)[0], expected_env.step(FORWARD)[0])  # the episode went on untouched


def test_long_episode_keeps_memory_flat(model):
    env = WorldModelEnv(model=model, obs_mode="latent")
    env.reset(seed=0)
    cache = env.unwrapped._world.generator.cache
    size = cache.nbytes()
    for _ in range(50):
        env.step(FORWARD)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(250):
        env.step(FORWARD)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert cache.nbytes() == size and cache.num_frames == 16
    assert grown_mb < 50, f"peak memory grew by {grown_mb:.1f} MB over 250 steps"


@pytest.fixture(scope="module")
def warp_model():
    """The default preset: space-to-depth, restarted contexts and the warped reference."""
    m = build_preset("default", seed=0)
    randomize_(m.backbone, seed=1, scale=0.3)
    return m


@pytest.mark.parametrize("obs_mode, which", [("frame", "model"), ("latent", "model"), ("frame", "warp_model")])
def test_vector_env_equals_single_envs(obs_mode, which, request):
    model = request.getfixturevalue(which)
    num_envs, seeds = 3, [11, 12, 13]
    venv = gym.make_vec("minwm/World-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", model=model,
                        obs_mode=obs_mode, max_episode_steps=2)
    rng = np.random.default_rng(0)
    actions = (rng.uniform(-1, 1, (4, num_envs, 6)) * np.array([0.08, 0.08, 0.08, 3, 3, 3])).astype(np.float32)
    obs, _ = venv.reset(seed=seeds)
    vector = [obs]
    truncations = []
    for k in range(4):
        obs, reward, terminated, truncated, info = venv.step(actions[k])
        vector.append(obs)
        truncations.append(truncated.copy())
    # Truncated after 2 steps; step 3 autoresets (next-step mode) and step 4 runs the new episode.
    assert [t.all() for t in truncations] == [False, True, False, False]
    for i in range(num_envs):
        env = WorldModelEnv(model=model, obs_mode=obs_mode)
        single = [env.reset(seed=seeds[i])[0]]
        single += [env.step(actions[k][i])[0] for k in range(2)]
        for k in range(3):
            tol = 0 if obs_mode == "frame" and k == 0 else 1e-4 if obs_mode == "latent" else 1
            np.testing.assert_allclose(vector[k][i].astype(np.float64), single[k].astype(np.float64), atol=tol)
    assert (info["frame_index"] == 16).all()  # the autoreset episodes are one step in
