"""Agents trained in the world model, scored in the truth (minwm_env.agents, minwm-agents)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import minwm_env  # noqa: F401  (registers the envs)
from minwm_env.agents import TaskRows, TaskWrapper, episode_plan, make_task, parse_layouts, rows_vec_env
from minwm_env.agents.tasks import COLLISION_MARGIN, bearing_deg, load_layout, surface_distance
from minwm_env.agents.train import main


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the command sets the process's threads; give the session its own back


def oracle(task, state) -> int:
    """A geometric policy (it sees the pose, which no agent does): turn to the target, walk, stop."""
    pose = state.world_pose()
    bearing = bearing_deg(pose, state.target.xy)
    if abs(bearing) > 6:
        return task.moves.index("left" if bearing > 0 else "right")
    if "stop" in task.moves and (task.name == "face" or surface_distance(pose, state.target) <= 0.8):
        return task.moves.index("stop")
    return task.moves.index("forward")


def play(task_name, episodes, script):
    """Both worlds, two rows each, the same episodes and moves; ``script(step, rows)`` gives the moves
    (from the truth's rows); a row that ends starts the next episode. Returns both worlds' records."""
    records = {}
    moves = []
    for world in ("truth", "model"):
        rows = TaskRows(task_name, world, layouts="100-103", num_rows=2)
        queue = list(episodes[2:])
        rows.start([0, 1], episodes[:2])
        record = []
        for step in range(40):
            if all(s.done for s in rows.states) and not queue:
                break
            if world == "truth":
                moves.append(np.array([script(step, rows, r) for r in range(2)]))
            _, outcomes, _ = rows.step(moves[step])
            for row, outcome in enumerate(outcomes):
                if outcome is None:
                    continue
                if not outcome.terminated:  # the env's own pose is the commanded one (an ending chunk may go on)
                    np.testing.assert_allclose(rows.env_poses[row], rows.states[row].pose, atol=1e-5)
                record.append((step, row, outcome, rows.states[row].pose.copy()))
                if (outcome.terminated or outcome.truncated) and queue:
                    rows.start([row], [queue.pop(0)])
        rows.close()
        records[world] = record
    return records


@pytest.mark.parametrize("task_name", ["reach", "face", "stop_in_front"])
def test_reward_and_termination_identical_in_both_worlds(task_name):
    task = make_task(task_name)
    episodes = episode_plan(task, "room", parse_layouts("100-103"), 4, seed=3)

    def script(step, rows, row):  # row 0 the oracle, row 1 a fixed pattern that also ends badly
        state = rows.states[row]
        if state is None or state.done:
            return 0
        return oracle(task, state) if row == 0 else (step * 7 + 1) % len(task.moves)

    records = play(task_name, episodes, script)
    truth, model = records["truth"], records["model"]
    assert len(truth) == len(model) > 0
    for (step_t, row_t, out_t, pose_t), (step_m, row_m, out_m, pose_m) in zip(truth, model):
        assert (step_t, row_t) == (step_m, row_m)
        assert out_t == out_m  # reward, terminated, truncated, success, event: the same numbers
        np.testing.assert_array_equal(pose_t, pose_m)
    events = {o.event for _, _, o, _ in truth}
    assert "success" in events  # the oracle solves it


def test_task_wrapper_same_in_world_model_and_truth():
    task = make_task("stop_in_front")
    episode = episode_plan(task, "room", [0], 1, seed=5)[0]
    results = {}
    for name, env in (("truth", gym.make("minwm/GroundTruth-v0", scene="room", scene_seed=0)),
                      ("model", gym.make("minwm/World-v0"))):
        wrapped = TaskWrapper(env, "stop_in_front")
        obs, info = wrapped.reset(seed=0, options={"episode": episode})
        assert obs.shape == (3, 64, 64) and obs.dtype == np.uint8
        steps = []
        for action in [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]:
            obs, reward, terminated, truncated, info = wrapped.step(action)
            if not terminated:
                np.testing.assert_allclose(info["pose"], info["commanded_pose"], atol=1e-5)
            steps.append((reward, terminated, truncated, info["event"]))
            if terminated or truncated:
                break
        results[name] = steps
        wrapped.close()
    assert results["truth"] == results["model"]
    assert results["truth"][-1][3] == "collision"  # walked into it: same end in both worlds


def test_starts_follow_the_task_definitions():
    for name in ("reach", "stop_in_front", "face"):
        task = make_task(name)
        plan = episode_plan(task, "room", parse_layouts("100-107"), 16, seed=0)
        assert [e.layout for e in plan] == [e.layout for e in episode_plan(task, "room", list(range(100, 108)), 16, 0)]
        for episode in plan:
            layout = load_layout("room", episode.layout)
            target = layout.objects[episode.target]
            bearing = abs(bearing_deg(episode.start, target.xy))
            x, y = episode.start[0, 3], episode.start[1, 3]
            assert layout.scene.clearance(x, y) > COLLISION_MARGIN
            if name == "reach":
                assert 15 <= bearing <= 28
            elif name == "stop_in_front":
                assert bearing <= 20
            else:
                assert bearing >= 30 and target.colour == "red"


def test_bad_task_names_and_options_raise_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'walk'.*reach"):
        make_task("walk")
    with pytest.raises(ValueError, match="has no option.*colour"):
        make_task("reach", colour="red")
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        make_task("face", colour="purple")
    with pytest.raises(ValueError, match="max_steps"):
        make_task("reach", max_steps=0)
    with pytest.raises(ValueError, match="cannot read layouts"):
        parse_layouts("0-x")
    with pytest.raises(ValueError, match="world must be one of"):
        gym.make("minwm/Reach-v0", world="dream")
    env = gym.make("minwm/Face-v0", world="truth", layouts="100-103")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.step(5)
    env.close()
    for argv, message in ((["--task", "walk"], None),
                          (["--train-layouts", "0-5", "--eval-layouts", "5-9"], "disjoint"),
                          (["--processes", "0"], "--processes must be"),
                          (["--eval-layouts", "1-2x"], "cannot read layouts")):
        with pytest.raises(SystemExit) as err:
            main(argv + ["--out", str(tmp_path / "bad")])
        if message:
            assert message in str(err.value)


def test_processes_over_sb3_subprocesses():
    venv = rows_vec_env(2, task="face", world="truth", layouts="0-3", num_rows=2)
    try:
        venv.seed(0)
        obs = venv.reset()
        assert obs.shape == (4, 3, 64, 64) and venv.num_envs == 4
        for _ in range(3):
            obs, rewards, dones, infos = venv.step(np.array([2, 0, 1, 2]))  # face: left, right, stop
        assert obs.shape == (4, 3, 64, 64) and rewards.shape == (4,) and len(infos) == 4
        assert dones[[0, 3]].all()  # stop at a start >= 30 degrees off: a bad stop ends it at once
    finally:
        venv.close()


def test_command_end_to_end_trains_in_the_world_model_and_scores_in_the_truth(tmp_path, capsys):
    out = tmp_path / "reach"
    argv = ["--task", "reach", "--out", str(out), "--steps", "128", "--envs", "4", "--n-steps", "16",
            "--batch-size", "32", "--epochs", "1", "--eval-episodes", "4", "--eval-every", "64",
            "--eval-every-episodes", "2", "--checkpoint-every", "64", "--video-episodes", "1",
            "--train-layouts", "0-3", "--eval-layouts", "100-103", "--max-steps", "10", "--no-progress"]
    main(argv)
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]) == {"world_model@truth", "truth@truth", "random@truth", "world_model@model"}
    for agent in ("world_model", "truth"):
        assert results["training"][agent]["num_timesteps"] == 128
        assert results["training"][agent]["cpu_s"] > 0 and (out / agent / "ppo.zip").is_file()
    for score in results["scores"].values():
        assert score["episodes"] == 4 and 0 <= score["success_rate"] <= 1
    table = (out / "results.md").read_text()
    assert "PPO trained in the world model" in table and "random moves" in table
    assert (out / "curves.png").stat().st_size > 10_000
    import imageio.v2 as imageio
    frames = imageio.mimread(out / "agent_world_model_in_truth.mp4", memtest=False)
    assert len(frames) > 16 and frames[0].shape == (288, 512, 3)
    steps = [json.loads(line)["step"] for line in (out / "world_model" / "eval_curve.jsonl").read_text().splitlines()]
    assert steps == [0, 64, 128]

    # rerun with more steps: the truth agent continues from its checkpoint
    main([a if a != "128" else "192" for a in argv] + ["--agents", "truth", "random"])
    state = json.loads((out / "truth" / "state.json").read_text())
    assert state["num_timesteps"] == 192
    results = json.loads((out / "results.json").read_text())
    assert len(results["scores"]) == 4  # the world-model agent's earlier scores stay in the table
    assert results["scores"]["truth@truth"]["tag"]["steps"] == 192
    steps = [json.loads(line)["step"] for line in (out / "truth" / "eval_curve.jsonl").read_text().splitlines()]
    assert steps == [0, 64, 128, 192]
    with pytest.raises(SystemExit, match="other settings"):
        main(argv[:-1] + ["--envs", "2"])
