"""minwm/World-v0 and its vector env: Gymnasium-correct, deterministic, robust, batch-exact."""

import json
import os
import subprocess
import sys

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


# A long episode in a fresh interpreter, resident memory read from /proc/self/statm every
# `every` steps after a warm-up: growth inside this pytest process would be measured against
# whatever earlier tests left behind (and ru_maxrss is a peak that never falls).
MEMORY_PROBE = """
import json, os, sys
import numpy as np
import minwm_env  # noqa: F401
from minwm_env.envs.world_model import WorldModelEnv
warmup, steps, every = (int(a) for a in sys.argv[1:4])
page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * page_mb
env = WorldModelEnv(model="default")  # decodes for free: frames of 786 kB a step cost no time
env.reset(seed=0)
actions = [np.array(a, np.float32) for a in ([0, 0, 0.08, 0, 0, 0], [0, 0, 0, 3, 0, 0], [0.08, 0, 0, -3, 0, 0])]
samples = []
for k in range(warmup + steps):
    env.step(actions[k % 3])
    if k >= warmup - 1 and (k + 1 - warmup) % every == 0:
        samples.append(rss_mb())
cache = env._world.generator.cache
print(json.dumps({"rss_mb": samples, "cache_frames": cache.num_frames,
                  "cache_bound": cache.sink_frames + cache.window_frames}))
"""


def test_long_episode_keeps_memory_flat():
    """60 steps of the default architecture after 10 warm-up steps: resident memory grows by less
    than 10 MB (measured: 1.3 MB over 150 steps). A generator that kept each chunk's decoded
    frames (16 float32 frames of 64x64, 786 kB a step) failed it by far: +132 MB over 100 steps."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "10", "60", "10"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = result["rss_mb"]
    grown = max(rss) - rss[0]
    assert grown < 10, f"resident memory grew by {grown:.1f} MB over 60 steps: {[round(r, 1) for r in rss]}"
    assert result["cache_frames"] <= result["cache_bound"]


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


def _row(info: dict, i: int) -> dict:
    """Row i of a vector-env info (Gymnasium's layout: values and ``_key`` masks)."""
    return {k: _row(v, i) if isinstance(v, dict) else v[i] for k, v in info.items()
            if not k.startswith("_") and info[f"_{k}"][i]}


def _assert_same_info(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert got[key].keys() == value.keys()  # timings: the same split, the clock's values
        elif key != "latency_s" and value is None:
            assert got[key] is None, key
        elif key != "latency_s":
            tol = 1 if key == "frames" else 1e-5  # uint8 frames: batched rounding, as above
            np.testing.assert_allclose(np.asarray(got[key], np.float64), np.asarray(value, np.float64), atol=tol,
                                       err_msg=key)


def test_vector_info_and_reward_fn_match_single_envs(model):
    """Row i's info holds the single env's keys and values, and reward_fn gets the arguments a
    single env gives it: at reset, steps, a masked reset and a next-step autoreset beside a
    stepping row."""
    calls = {"vector": [], 0: [], 1: []}

    def recorder(name):
        def reward_fn(obs, info):
            calls[name].append((obs.copy(), info))
            return float(obs.mean())
        return reward_fn

    venv = gym.make_vec("minwm/World-v0", num_envs=2, vectorization_mode="vector_entry_point", model=model,
                        reward_fn=recorder("vector"), max_episode_steps=2)
    singles = [WorldModelEnv(model=model, reward_fn=recorder(i)) for i in range(2)]
    a1, a2, a3 = FORWARD, np.array([0, 0, 0, 3, 0, 0], np.float32), np.array([0.05, 0, 0, 0, -2, 0], np.float32)

    _, info = venv.reset(seed=[5, 6])
    for i, env in enumerate(singles):
        _assert_same_info(_row(info, i), env.reset(seed=[5, 6][i])[1])
    _, rewards, *_, info = venv.step(np.stack([a1, a1]))
    for i, env in enumerate(singles):
        _, reward, *_, single_info = env.step(a1)
        _assert_same_info(_row(info, i), single_info)
        assert rewards[i] == pytest.approx(reward, abs=1)
    _, info = venv.reset(seed=[None, 7], options={"reset_mask": np.array([False, True])})
    assert info["_pose"].tolist() == [False, True]  # only the reset row has an info
    _assert_same_info(_row(info, 1), singles[1].reset(seed=7)[1])
    _, _, _, truncated, info = venv.step(np.stack([a2, a2]))
    assert truncated.tolist() == [True, False]
    for i, env in enumerate(singles):
        _assert_same_info(_row(info, i), env.step(a2)[-1])
    _, rewards, _, truncated, info = venv.step(np.stack([a3, a3]))  # row 0 autoresets, row 1 steps
    assert truncated.tolist() == [False, True] and rewards[0] == 0
    assert info["_start_world_pose"].tolist() == [True, False]
    _assert_same_info(_row(info, 0), singles[0].reset()[1])
    _assert_same_info(_row(info, 1), singles[1].step(a3)[-1])

    # reward_fn: rows 0, 1 at the first two steps, row 1 alone at the third (row 0 restarted).
    assert [len(calls[0]), len(calls[1])] == [2, 3]
    singles_calls = {0: iter(calls[0]), 1: iter(calls[1])}
    assert len(calls["vector"]) == 5
    for row, (obs, info) in zip([0, 1, 0, 1, 1], calls["vector"]):
        single_obs, single_info = next(singles_calls[row])
        np.testing.assert_allclose(obs.astype(np.float64), single_obs.astype(np.float64), atol=1)
        _assert_same_info(info, single_info)


THREADS_PROBE = """
import json, os, sys
order, num_threads = sys.argv[1], json.loads(sys.argv[2])
if order == "torch-first":
    import torch
import minwm_env
import torch
from minwm_env.envs.world_model import WorldModelEnv
torch.set_num_threads(2)  # the caller's own count
during = []
env = WorldModelEnv(model="tiny", obs_mode="latent", num_threads=num_threads,
                    reward_fn=lambda obs, info: during.append(torch.get_num_threads()) or 0.0)
env.reset(seed=0)
env.step([0, 0, 0.08, 0, 0, 0])
print(json.dumps({"wait_policy": os.environ.get("OMP_WAIT_POLICY"), "during_step": during[0],
                  "after_step": torch.get_num_threads()}))
"""


THREAD_CASES = [
    # imported before torch: waiting threads sleep, the caller's thread count is kept
    ("minwm-first", {}, None, {"wait_policy": "PASSIVE", "during_step": 2}),
    # torch first (too late for OpenMP's settings): steps run on one thread, then the caller's again
    ("torch-first", {}, None, {"wait_policy": None, "during_step": 1}),
    # the user's choices win: their OpenMP variables, MINWM_THREADS, an explicit argument
    ("minwm-first", {"OMP_WAIT_POLICY": "ACTIVE"}, None, {"wait_policy": "ACTIVE", "during_step": 2}),
    ("torch-first", {"MINWM_THREADS": "off"}, None, {"wait_policy": None, "during_step": 2}),
    ("minwm-first", {"MINWM_THREADS": "1"}, None, {"wait_policy": "PASSIVE", "during_step": 1}),
    ("torch-first", {"MINWM_THREADS": "1"}, 2, {"wait_policy": None, "during_step": 2}),
]


@pytest.fixture(scope="module")
def thread_probes():
    """Every case's fresh interpreter started at once (each spends seconds importing torch and
    diffusers; what they report are thread counts, which running side by side does not change)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MINWM_THREADS")}
    procs = [subprocess.Popen([sys.executable, "-c", THREADS_PROBE, order, json.dumps(num_threads)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**clean, **environment})
             for order, environment, num_threads, _ in THREAD_CASES]
    outputs = [proc.communicate(timeout=600) for proc in procs]  # (stdout, stderr), read as they run
    return [(proc.returncode, *output) for proc, output in zip(procs, outputs)]


@pytest.mark.parametrize("case", range(len(THREAD_CASES)),
                         ids=[f"{order}-{environment}-{threads}" for order, environment, threads, _ in THREAD_CASES])
def test_thread_settings_and_overrides(thread_probes, case):
    returncode, stdout, stderr = thread_probes[case]
    assert returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1]) == {**THREAD_CASES[case][3], "after_step": 2}


def test_bad_thread_settings_raise():
    with pytest.raises(ValueError, match="num_threads must be an int >= 1"):
        WorldModelEnv(model="tiny", num_threads=0)
    os.environ["MINWM_THREADS"] = "many"
    try:
        with pytest.raises(ValueError, match="MINWM_THREADS must be .*'many'"):
            WorldModelEnv(model="tiny")
    finally:
        del os.environ["MINWM_THREADS"]
