"""minwm-agents: PPO trained inside the world model, scored in the true world.

    minwm-agents --task reach --steps 100000 --out outputs/agents/reach
    python -m minwm_env.agents.train --task face --colour blue --processes 2

Three policies for one task (:mod:`minwm_env.agents.tasks`), all scored on the same fixed
episodes in ``minwm/GroundTruth-v0`` on held-out layouts (``--eval-layouts``, disjoint from
``--train-layouts``):

1. ``ppo_world_model`` — Stable-Baselines3 PPO (``CnnPolicy``) trained inside
   ``minwm/World-v0`` (its native vector env: ``--envs`` rows in one batched forward pass per
   process, ``--processes`` processes under SB3's ``SubprocVecEnv``); also scored inside the
   world model on the same held-out episodes (what it believes it achieves);
2. ``ppo_truth`` — the same PPO with the same number of env steps in the truth;
3. ``random`` — uniformly random moves.

Writes into ``--out``: ``results.md`` and ``results.json`` (success rate, mean return, CPU
time, env steps, throughput), ``curves.png`` (learning curves: training episodes in each
world, periodic scores in the truth on held-out layouts), ``agent_world_model_in_truth.mp4``
(the world-model-trained agent acting in the truth, a top-down map beside it), and per agent
``world_model/`` and ``truth/`` with SB3 checkpoints (``ppo.zip``), ``state.json`` and the
curves' data. Rerunning the same command continues from the checkpoints (a larger ``--steps``
trains on); the settings that shape training must stay the same (``config.json``).
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..cli import arg, parse
from ..models import DEFAULT_MODEL
from ..threads import configure_process
from ..world.scenes import SCENE_NAMES
from .envs import TaskRows, rows_vec_env
from .tasks import COLOUR_NAMES, TASKS, episode_plan, make_task, parse_layouts, usable_layouts

AGENTS = ("world_model", "truth", "random")
WORLD_OF = {"world_model": "model", "truth": "truth"}
# settings that shape training: a rerun on the same --out must keep them
FINGERPRINT = ("task", "colour", "max_steps", "model", "scene", "train_layouts", "envs", "processes", "n_steps",
               "batch_size", "epochs", "learning_rate", "ent_coef", "gamma", "clip_range", "seed", "memory", "size")


@dataclass
class Args:
    """Train PPO inside the world model and in the truth; score both and a random policy in the truth."""

    task: str = arg("reach", "the task", choices=sorted(TASKS))
    colour: str | None = arg(None, "face: the colour of the object to face (default red)", choices=list(COLOUR_NAMES))
    max_steps: int | None = arg(None, "steps per episode (default: the task's own: 30, face 20)")
    steps: int = arg(100_000, "env steps to train each PPO agent (rounded up to whole PPO rollouts)")
    out: str | None = arg(None, "output folder (default outputs/agents/<task>)")
    model: str = arg(DEFAULT_MODEL, "world model: the shipped model, a preset name or a model folder")
    scene: str = arg("room", "scene kind of every layout", choices=list(SCENE_NAMES))
    train_layouts: str = arg("0-15", "layout seeds of training episodes, e.g. '0-15' or '0,2,5-9'")
    eval_layouts: str = arg("100-115", "held-out layout seeds of the scores (disjoint from --train-layouts)")
    size: int = arg(64, "frame size in pixels (the world model's own)")
    envs: int = arg(8, "env rows per process (the world model steps them in one batched pass)")
    processes: int = arg(1, "processes stepping env rows (SB3 SubprocVecEnv when > 1)")
    n_steps: int = arg(128, "PPO: steps per row per rollout")
    batch_size: int = arg(256, "PPO: minibatch size")
    epochs: int = arg(4, "PPO: epochs per rollout")
    learning_rate: float = arg(2.5e-4, "PPO: learning rate")
    ent_coef: float = arg(0.01, "PPO: entropy bonus")
    gamma: float = arg(0.99, "PPO: discount")
    clip_range: float = arg(0.1, "PPO: clip range")
    eval_episodes: int = arg(100, "episodes of the final scores (the same episodes for every policy)")
    eval_every: int = arg(10_000, "env steps between scores in the truth during training (0: none)")
    eval_every_episodes: int = arg(24, "episodes of each score during training (the first of the final ones)")
    checkpoint_every: int = arg(10_000, "env steps between checkpoints (and at the end)")
    video_episodes: int = arg(3, "episodes of the world-model agent in the truth in the video (0: no video)")
    dream_score: bool = arg(True, "also score the world-model agent inside the world model")
    agents: tuple[str, ...] = arg(AGENTS, "which agents to train and score", choices=list(AGENTS))
    seed: int = arg(0, "seed of PPO, training episodes and the random policy")
    memory: int = arg(-1, "world model view memory in frames (-1: the model's own setting, 0: off)")
    num_threads: int | None = arg(None, "torch threads (default: the package's choice; 1 a worker with --processes > 1)")
    progress: bool = arg(True, "progress bars")


def check_args(args: Args) -> Args:
    """Every setting checked before any work, with the flag named; returns the args completed."""
    def need(condition: bool, message: str):
        if not condition:
            raise ValueError(message)

    need(args.task in TASKS, f"--task: unknown task {args.task!r}; tasks: {sorted(TASKS)}")
    task = make_task(args.task, max_steps=args.max_steps, **({"colour": args.colour} if args.colour else {}))
    need(args.scene in SCENE_NAMES, f"--scene: unknown scene {args.scene!r}; scenes: {list(SCENE_NAMES)}")
    for name in ("steps", "envs", "processes", "n_steps", "batch_size", "epochs", "eval_episodes",
                 "eval_every_episodes", "checkpoint_every"):
        value = getattr(args, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    for name in ("eval_every", "video_episodes"):
        value = getattr(args, name)
        need(isinstance(value, int) and value >= 0,
             f"--{name.replace('_', '-')} must be an integer >= 0, got {value!r}")
    need(args.learning_rate > 0 and args.ent_coef >= 0 and 0 < args.gamma <= 1 and 0 < args.clip_range,
         "PPO settings: --learning-rate > 0, --ent-coef >= 0, 0 < --gamma <= 1, --clip-range > 0")
    need(args.memory >= -1, f"--memory must be -1 (the model's own), 0 (off) or a number of frames, got {args.memory}")
    unknown = sorted(set(args.agents) - set(AGENTS))
    need(not unknown and len(args.agents) > 0, f"--agents: unknown {unknown}; agents: {list(AGENTS)}")
    train = parse_layouts(args.train_layouts)
    held_out = parse_layouts(args.eval_layouts)
    shared = sorted(set(train) & set(held_out))
    need(not shared, f"--train-layouts and --eval-layouts must be disjoint; both have {shared}")
    usable_layouts(task, args.scene, train)
    usable_layouts(task, args.scene, held_out)
    need(args.video_episodes <= args.eval_episodes, "--video-episodes cannot exceed --eval-episodes")
    if args.out is None:
        args.out = f"outputs/agents/{args.task}"
    args.agents = tuple(a for a in AGENTS if a in args.agents)
    return args


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Run:
    """One invocation: settings, output folder, the fixed scoring episodes."""

    def __init__(self, args: Args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.task_options = {"max_steps": args.max_steps, **({"colour": args.colour} if args.colour else {})}
        self.task = make_task(args.task, **self.task_options)
        self.memory = None if args.memory < 0 else args.memory
        self.threads = args.num_threads if args.num_threads is not None else (1 if args.processes > 1 else None)
        self.eval_seed = 1000 + args.seed
        self.episodes = episode_plan(self.task, args.scene, parse_layouts(args.eval_layouts), args.eval_episodes,
                                     self.eval_seed)
        self._check_config()

    def _check_config(self) -> None:
        path = self.out / "config.json"
        mine = {k: v for k, v in asdict(self.args).items() if k in FINGERPRINT}
        if path.is_file():
            before = json.loads(path.read_text()).get("fingerprint", {})
            changed = sorted(k for k in FINGERPRINT if k in before and before[k] != mine[k])
            if changed:
                flags = ", ".join("--" + c.replace("_", "-") for c in changed)
                raise ValueError(f"{self.out} holds a run with other settings ({flags}: "
                                 f"{ {c: before[c] for c in changed} }); rerun with those, or choose another --out")
        _write_json(path, {"fingerprint": mine, "args": asdict(self.args), "task": self.task.describe()})

    def rows(self, world: str, layouts: str, num_rows: int) -> TaskRows:
        return TaskRows(self.task, world, self.args.scene, layouts, num_rows, self.args.size, self.args.model,
                        self.threads, self.memory)

    def env_kwargs(self, world: str) -> dict:
        return dict(task=self.task.name, world=world, scene=self.args.scene, layouts=self.args.train_layouts,
                    num_rows=self.args.envs, size=self.args.size, model=self.args.model,
                    num_threads=self.threads, memory=self.memory,
                    **{k: v for k, v in self.task_options.items() if v is not None})

    def log(self, message: str) -> None:
        print(f"minwm-agents: {message}", file=sys.stderr, flush=True)


# -- scoring -------------------------------------------------------------------------------------

def score(run: Run, policy, world: str, count: int | None = None, record: int = 0, desc: str = "") -> dict:
    """Play the fixed held-out episodes (the first ``count``) with ``policy(obs batch) -> moves``
    in ``world``; the first ``record`` episodes keep their frames and poses for the video."""
    from tqdm import tqdm

    episodes = run.episodes[:count or len(run.episodes)]
    rows = run.rows(world, run.args.eval_layouts, min(run.args.envs, len(episodes)))
    results, recordings = [None] * len(episodes), {}
    began_wall, began_cpu = time.perf_counter(), _cpu_self()
    row_episode = [-1] * rows.num_rows
    queue = list(range(len(episodes)))
    steps = 0
    try:
        first = queue[:rows.num_rows]
        del queue[:rows.num_rows]
        obs = rows.start(list(range(len(first))), [episodes[i] for i in first])
        for row, index in enumerate(first):
            row_episode[row] = index
            if index < record:
                recordings[index] = _recording(rows, row)
        bar = tqdm(total=len(episodes), desc=desc or f"score in {world}", disable=not run.args.progress,
                   leave=False, file=sys.stderr)
        while any(i >= 0 for i in row_episode):
            active = [r for r in range(rows.num_rows) if row_episode[r] >= 0]
            actions = np.zeros(rows.num_rows, np.int64)
            actions[active] = np.asarray(policy(obs[active])).reshape(-1)
            keep = any(row_episode[r] in recordings for r in active)
            obs, outcomes, chunks = rows.step(actions, keep_chunks=keep)
            steps += len(active)
            for row in active:
                index = row_episode[row]
                if index in recordings:
                    _record_step(recordings[index], rows, row, chunks[row])
                if outcomes[row].terminated or outcomes[row].truncated:
                    results[index] = rows.info(row)
                    results[index].pop("pose"), results[index].pop("world_pose")
                    bar.update(1)
                    if queue:
                        index = queue.pop(0)
                        obs[row] = rows.start([row], [episodes[index]])[0]
                        row_episode[row] = index
                        if index < record:
                            recordings[index] = _recording(rows, row)
                    else:
                        row_episode[row] = -1
        bar.close()
    finally:
        rows.close()
    wall, cpu = time.perf_counter() - began_wall, _cpu_self() - began_cpu
    return {"world": world, "episodes": len(episodes), "success_rate": float(np.mean([r["success"] for r in results])),
            "mean_return": float(np.mean([r["return"] for r in results])),
            "mean_length": float(np.mean([r["steps"] for r in results])),
            "events": {e: sum(r["event"] == e for r in results)
                       for e in ("success", "collision", "bad_stop", "timeout")},
            "env_steps": steps, "wall_s": wall, "cpu_s": cpu, "per_episode": results,
            "recordings": [recordings[i] for i in sorted(recordings)]}


def _recording(rows: TaskRows, row: int) -> dict:
    state = rows.states[row]
    return {"episode": state.episode, "frames": [rows.last_frames[row].copy()], "poses": [state.world_pose()],
            "summary": None}


def _record_step(recording: dict, rows: TaskRows, row: int, chunk: np.ndarray) -> None:
    state = rows.states[row]
    recording["frames"].extend(np.asarray(chunk))
    recording["poses"].extend([state.world_pose()] * len(chunk))
    if state.done:
        recording["summary"] = state.summary()


def ppo_policy(model):
    return lambda obs: model.predict(obs, deterministic=True)[0]


def random_policy(num_moves: int, seed: int):
    rng = np.random.default_rng(seed)
    return lambda obs: rng.integers(num_moves, size=len(obs))


# -- training ------------------------------------------------------------------------------------

def train_agent(run: Run, agent: str) -> dict:
    """Train (or continue training) PPO in the world of ``agent``; returns its training state."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    args, world = run.args, WORLD_OF[agent]
    folder = run.out / agent
    folder.mkdir(exist_ok=True)
    checkpoint, state_path = folder / "ppo.zip", folder / "state.json"
    train_curve, eval_curve = folder / "train_episodes.jsonl", folder / "eval_curve.jsonl"
    state = json.loads(state_path.read_text()) if state_path.is_file() and checkpoint.is_file() else {
        "num_timesteps": 0, "cpu_s": 0.0, "wall_s": 0.0, "rollout_s": 0.0, "rollout_steps": 0, "eval_s": 0.0,
        "eval_cpu_s": 0.0, "episodes": 0}
    done_steps = state["num_timesteps"]
    for path in (train_curve, eval_curve):  # a rerun continues from the checkpoint: drop what came after it
        kept = [line for line in _read_jsonl(path) if line["step"] <= done_steps]
        path.write_text("".join(json.dumps(line) + "\n" for line in kept))
    if done_steps >= args.steps:
        run.log(f"{agent}: trained {done_steps} env steps already (>= --steps {args.steps})")
        return state

    run.log(f"{agent}: PPO in {'minwm/World-v0' if world == 'model' else 'minwm/GroundTruth-v0'}, "
            f"{done_steps} -> {args.steps} env steps, {args.processes} x {args.envs} rows")
    began_wall, began_self, began_children = time.perf_counter(), _cpu_self(), _cpu_children()
    base = dict(state)
    venv = rows_vec_env(args.processes, **run.env_kwargs(world))
    try:
        if checkpoint.is_file():
            model = PPO.load(checkpoint, env=venv, device="cpu")
            model.set_random_seed(args.seed + done_steps)  # a continued run draws new episodes, reproducibly
        else:
            model = PPO("CnnPolicy", venv, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.epochs,
                        learning_rate=args.learning_rate, ent_coef=args.ent_coef, gamma=args.gamma,
                        clip_range=args.clip_range, seed=args.seed, device="cpu", verbose=0)
        evals = _read_jsonl(eval_curve)
        last_eval = evals[-1]["step"] if evals else None

        def evaluate(step: int) -> None:
            nonlocal last_eval
            if not args.eval_every or last_eval == step:
                return
            wall, cpu = time.perf_counter(), _cpu_self()
            result = score(run, ppo_policy(model), "truth", args.eval_every_episodes, desc=f"{agent}: score at {step}")
            state["eval_s"] += time.perf_counter() - wall
            state["eval_cpu_s"] += _cpu_self() - cpu
            with eval_curve.open("a") as f:
                f.write(json.dumps({"step": step, "success_rate": result["success_rate"],
                                    "mean_return": result["mean_return"], "episodes": result["episodes"]}) + "\n")
            last_eval = step

        def save(step: int) -> None:
            buffer = io.BytesIO()
            model.save(buffer)
            tmp = checkpoint.with_suffix(".zip.tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, checkpoint)
            state["num_timesteps"] = step
            state["wall_s"] = base["wall_s"] + time.perf_counter() - began_wall
            state["cpu_s"] = base["cpu_s"] + _cpu_self() - began_self  # the workers' CPU is added when they end
            _write_json(state_path, state)

        class Monitor(BaseCallback):
            def _on_training_start(self) -> None:
                steps = self.model.num_timesteps
                self.bar = tqdm(total=args.steps, initial=steps, desc=f"PPO {agent}", unit="step",
                                disable=not args.progress, file=sys.stderr)
                self.next_eval = 0 if last_eval is None else last_eval + args.eval_every
                self.next_save = (steps // args.checkpoint_every + 1) * args.checkpoint_every
                self.log = train_curve.open("a")

            def _on_rollout_start(self) -> None:  # after the previous rollout's update: a consistent model
                steps = self.model.num_timesteps
                if args.eval_every and steps >= self.next_eval:
                    evaluate(steps)
                    self.next_eval = (steps // args.eval_every + 1) * args.eval_every
                if steps >= self.next_save:
                    save(steps)
                    self.next_save = (steps // args.checkpoint_every + 1) * args.checkpoint_every
                self.rollout_began, self.rollout_from = time.perf_counter(), steps

            def _on_rollout_end(self) -> None:
                state["rollout_s"] += time.perf_counter() - self.rollout_began
                state["rollout_steps"] += self.model.num_timesteps - self.rollout_from

            def _on_step(self) -> bool:
                for info in self.locals["infos"]:
                    if "episode" in info:
                        state["episodes"] += 1
                        self.log.write(json.dumps({"step": self.model.num_timesteps, "return": info["episode"]["r"],
                                                   "length": info["episode"]["l"], "success": info["is_success"],
                                                   "event": info["task"]["event"]}) + "\n")
                self.bar.update(self.training_env.num_envs)
                return True

            def _on_training_end(self) -> None:
                self.bar.close()
                self.log.close()

        model.learn(args.steps - done_steps, callback=Monitor(), reset_num_timesteps=False)
        evaluate(model.num_timesteps)
        save(model.num_timesteps)
    finally:
        venv.close()
    state["cpu_s"] = base["cpu_s"] + (_cpu_self() - began_self) + (_cpu_children() - began_children)
    state["wall_s"] = base["wall_s"] + time.perf_counter() - began_wall
    _write_json(state_path, state)
    return state


def _saved_state(run: Run, agent: str) -> dict | None:
    path = run.out / agent / "state.json"
    return json.loads(path.read_text()) if path.is_file() and (run.out / agent / "ppo.zip").is_file() else None


def load_agent(run: Run, agent: str):
    from stable_baselines3 import PPO

    return PPO.load(run.out / agent / "ppo.zip", device="cpu")


# -- the command ---------------------------------------------------------------------------------

def run_all(args: Args) -> dict:
    """Everything ``minwm-agents`` does; returns what ``results.json`` holds."""
    from .report import plot_curves, write_tables, write_video

    args = check_args(args)
    run = Run(args)
    trained = {agent: train_agent(run, agent) for agent in args.agents if agent in WORLD_OF}
    trained.update({agent: state for agent in WORLD_OF if agent not in trained
                    for state in [_saved_state(run, agent)] if state is not None})
    cache_path = run.out / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    video = run.out / "agent_world_model_in_truth.mp4"
    plan = [(agent, "truth") for agent in args.agents]
    if "world_model" in args.agents and args.dream_score:
        plan.append(("world_model", "model"))

    def tag(agent: str) -> dict:
        return {"steps": trained[agent]["num_timesteps"] if agent in trained else 0, "episodes": args.eval_episodes,
                "eval_seed": run.eval_seed, "eval_layouts": args.eval_layouts}

    for agent, world in plan:
        key = f"{agent}@{world}"
        wants_video = agent == "world_model" and world == "truth" and args.video_episodes > 0
        if cache.get(key, {}).get("tag") == tag(agent) and not (wants_video and not video.is_file()):
            continue
        run.log(f"scoring {agent} in the {'world model' if world == 'model' else 'truth'} "
                f"({args.eval_episodes} held-out episodes)")
        policy = (random_policy(len(run.task.moves), args.seed) if agent == "random"
                  else ppo_policy(load_agent(run, agent)))
        result = score(run, policy, world, record=args.video_episodes if wants_video else 0,
                       desc=f"score {agent} in {world}")
        recordings = result.pop("recordings")
        if wants_video:
            write_video(video, recordings, args.scene)
        result["tag"] = tag(agent)
        cache[key] = result
        _write_json(cache_path, cache)
    # every score of the agents as they are now, this run's or an earlier one's (--agents picks what runs)
    order = ["world_model@truth", "truth@truth", "random@truth", "world_model@model"]
    scores = {key: cache[key] for key in order if key in cache and cache[key]["tag"] == tag(key.split("@")[0])}
    results = {"task": run.task.describe(), "scene": args.scene, "train_layouts": parse_layouts(args.train_layouts),
               "eval_layouts": parse_layouts(args.eval_layouts), "model": args.model,
               "processes": args.processes, "rows_per_process": args.envs, "training": trained,
               "scores": {k: {n: v for n, v in s.items() if n != "per_episode"} for k, s in scores.items()},
               "out": str(run.out)}
    _write_json(run.out / "results.json", results)
    write_tables(run.out, results)
    plot_curves(run.out, tuple(trained), scores.get("random@truth"))
    run.log(f"wrote {run.out / 'results.md'}")
    return results


def main(argv=None) -> None:
    args = parse(Args, argv)
    configure_process(args.num_threads)
    try:
        check_args(args)
    except ValueError as err:
        raise SystemExit(f"minwm-agents: {err}") from err
    try:
        results = run_all(args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"minwm-agents: {err}") from err
    print((Path(results["out"]) / "results.md").read_text())


if __name__ == "__main__":
    main()
