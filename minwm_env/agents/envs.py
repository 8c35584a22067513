"""The tasks as environments, in either world, one row or many.

- :class:`TaskRows` — the engine: ``num_rows`` episodes of one task side by side, in the world
  model (one ``minwm/World-v0`` native vector env: all rows in one batched forward pass) or in
  the truth (``minwm/GroundTruth-v0``, one env per row, each on the layout of its episode).
  Episodes start on layouts drawn from a list; a world-model row starts from the truth's
  rendered view of its start pose (``options["image"]``), a truth row at it (``start_pose``).
- :class:`TaskEnv` — one row as a plain Gymnasium env (registered as ``minwm/Reach-v0``,
  ``minwm/Face-v0``, ``minwm/StopInFront-v0``; ``world="model"`` or ``"truth"``).
- :class:`TaskWrapper` — a task around an env you made yourself, on one layout.
- :class:`TaskRowsEnv` + :class:`RowsVecEnv` — many rows as Stable-Baselines3 ``VecEnv`` rows:
  each process (SB3's ``DummyVecEnv`` in this one, ``SubprocVecEnv`` over several) holds one
  :class:`TaskRowsEnv` whose rows step together and restart on their own; :class:`RowsVecEnv`
  flattens processes × rows into SB3's rows.

Observations are the decoded frames, channels first: ``uint8 (3, H, W)``. Actions are the
task's move indices (:mod:`minwm_env.agents.tasks`).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from ..models import DEFAULT_MODEL
from ..world.renderer import WorldRenderer
from .tasks import Episode, EpisodeState, Task, load_layout, make_task, move_delta, parse_layouts, usable_layouts

WORLDS = ("model", "truth")
INFO_KEYS = ("layout", "target", "target_colour", "steps", "return", "success", "event")


def to_chw(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(frame, -1, -3))


def check_world(world: str) -> str:
    if world not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)} ('model': minwm/World-v0, 'truth': "
                         f"minwm/GroundTruth-v0), got {world!r}")
    return world


class _Renderers:
    """Truth renderers by layout, the least recently used closed beyond ``capacity``."""

    def __init__(self, size: int, capacity: int):
        self.size, self.capacity = size, capacity
        self._cache: OrderedDict[tuple[str, int], WorldRenderer] = OrderedDict()

    def render(self, episode: Episode) -> np.ndarray:
        key = (episode.scene, episode.layout)
        if key not in self._cache:
            self._cache[key] = WorldRenderer(load_layout(*key).scene, self.size, self.size)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)[1].close()
        self._cache.move_to_end(key)
        return self._cache[key].render(episode.start)

    def close(self) -> None:
        for renderer in self._cache.values():
            renderer.close()
        self._cache.clear()


class _ModelWorld:
    """Rows in ``minwm/World-v0``'s native vector env; starts rendered by the truth's renderer."""

    kind = "model"

    def __init__(self, num_rows: int, size: int, model, num_threads, memory, pool_size: int):
        self.env = gym.make_vec("minwm/World-v0", num_envs=num_rows, vectorization_mode="vector_entry_point",
                                model=model, num_threads=num_threads, memory=memory, max_episode_steps=None)
        shape = self.env.single_observation_space.shape
        if shape != (size, size, 3):
            self.env.close()
            raise ValueError(f"the world model makes frames of shape {shape}; the tasks need square frames of the "
                             f"size the truth renders (size={size}): choose size={shape[0]} or another model")
        self.chunk_frames = self.env._world.chunk_frames
        self.num_rows, self.renderers, self.started = num_rows, _Renderers(size, pool_size), False

    def start(self, rows: list[int], episodes: list[Episode], seeds: list[int]) -> np.ndarray:
        images = np.stack([self.renderers.render(ep) for ep in episodes])
        if not self.started:
            if sorted(rows) != list(range(self.num_rows)):
                raise RuntimeError("the first start must start every row")
            order = np.argsort(rows)
            self.env.reset(seed=[seeds[i] for i in order], options={"image": list(images[order])})
            self.started = True
            return images
        mask = np.zeros(self.num_rows, dtype=bool)
        mask[rows] = True
        order = np.argsort(rows)  # the env takes the reset rows' images in row order
        row_seeds: list[int | None] = [None] * self.num_rows
        for row, seed in zip(rows, seeds):
            row_seeds[row] = seed  # the row's noise from the task's generator: same seed, same dream
        self.env.reset(seed=row_seeds, options={"reset_mask": mask, "image": list(images[order])})
        return images

    def step(self, deltas: list[np.ndarray | None], keep_chunks: bool):
        actions = np.stack([np.zeros(6, np.float32) if d is None else d for d in deltas])
        obs, _, _, _, info = self.env.step(actions)
        chunks = [info["frames"][i] for i in range(self.num_rows)] if keep_chunks else None
        return obs, chunks, [info["pose"][i] for i in range(self.num_rows)]

    def close(self) -> None:
        self.env.close()
        self.renderers.close()


class _TruthWorld:
    """One ``minwm/GroundTruth-v0`` per row, leased from a pool of envs by layout."""

    kind = "truth"

    def __init__(self, num_rows: int, size: int, pool_size: int):
        self.size, self.pool_size, self.chunk_frames = size, pool_size, 4
        self.leased: list[tuple[tuple[str, int], gym.Env] | None] = [None] * num_rows
        self.idle: OrderedDict[tuple[str, int], list[gym.Env]] = OrderedDict()
        self.frames = np.zeros((num_rows, size, size, 3), np.uint8)

    def _lease(self, key: tuple[str, int]) -> gym.Env:
        free = self.idle.get(key)
        if free:
            env = free.pop()
            if not free:
                del self.idle[key]
            return env
        return gym.make("minwm/GroundTruth-v0", scene=key[0], scene_seed=key[1], width=self.size, height=self.size)

    def _release(self, row: int) -> None:
        if self.leased[row] is None:
            return
        key, env = self.leased[row]
        self.leased[row] = None
        self.idle.setdefault(key, []).append(env)
        self.idle.move_to_end(key)
        while sum(len(v) for v in self.idle.values()) > self.pool_size:
            oldest = next(iter(self.idle))
            self.idle[oldest].pop(0).close()
            if not self.idle[oldest]:
                del self.idle[oldest]

    def start(self, rows: list[int], episodes: list[Episode], seeds: list[int]) -> np.ndarray:
        for row, episode in zip(rows, episodes):
            self._release(row)
            key = (episode.scene, episode.layout)
            env = self._lease(key)
            self.leased[row] = (key, env)
            self.frames[row], _ = env.reset(options={"start_pose": episode.start})
        return self.frames[rows].copy()

    def step(self, deltas: list[np.ndarray | None], keep_chunks: bool):
        chunks, poses = [], []
        for row, delta in enumerate(deltas):
            if delta is None or self.leased[row] is None:  # idle, or a stop: nothing moves, nothing to render
                chunks.append(self.frames[row][None])
                poses.append(None)
                continue
            frame, _, _, _, info = self.leased[row][1].step(delta)
            self.frames[row] = frame
            chunks.append(info["frames"])
            poses.append(info["pose"])
        return self.frames.copy(), chunks if keep_chunks else None, poses

    def close(self) -> None:
        for row in range(len(self.leased)):
            self._release(row)
        for envs in self.idle.values():
            for env in envs:
                env.close()
        self.idle.clear()


class TaskRows:
    """``num_rows`` episodes of ``task`` side by side in one world (see the module docstring).

    ``start(rows, episodes)`` begins episodes (drawn from the rows' generators when None);
    ``step(actions)`` advances every row that has one under way and returns the observations
    (``(num_rows, 3, H, W)``), one :class:`~minwm_env.agents.tasks.Outcome` or None per row,
    and, with ``keep_chunks``, every row's RGB frames of the step. Ended rows stay ended
    until started again.
    """

    def __init__(self, task: str | Task = "reach", world: str = "truth", scene: str = "room",
                 layouts: str | list[int] = "0-15", num_rows: int = 1, size: int = 64, model=DEFAULT_MODEL,
                 num_threads: int | None = None, memory: bool | int | None = None, pool_size: int | None = None,
                 **task_options):
        if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 1:
            raise ValueError(f"num_rows must be an int >= 1, got {num_rows!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise ValueError(f"size must be an int >= 16 (pixels), got {size!r}")
        self.task = make_task(task, **task_options)
        self.world_name, self.scene = check_world(world), scene
        self.layouts = usable_layouts(self.task, scene, parse_layouts(layouts))
        self.num_rows, self.size = num_rows, size
        pool = pool_size if pool_size is not None else max(8, num_rows + 4)
        self.world = (_ModelWorld(num_rows, size, model, num_threads, memory, pool) if world == "model"
                      else _TruthWorld(num_rows, size, pool))
        self.states: list[EpisodeState | None] = [None] * num_rows
        self.rngs = [np.random.default_rng() for _ in range(num_rows)]
        self.obs = np.zeros((num_rows, 3, size, size), np.uint8)
        self.env_poses: list[np.ndarray | None] = [None] * num_rows  # each row's pose as its env reports it
        self.last_frames = np.zeros((num_rows, size, size, 3), np.uint8)
        self.observation_space = gym.spaces.Box(0, 255, (3, size, size), np.uint8)
        self.action_space = gym.spaces.Discrete(len(self.task.moves))

    def seed(self, seed: int | None) -> None:
        if seed is not None:
            self.rngs = [np.random.default_rng([int(seed), row]) for row in range(self.num_rows)]

    def sample(self, row: int) -> Episode:
        rng = self.rngs[row]
        layout = self.layouts[int(rng.integers(len(self.layouts)))]
        return self.task.sample(self.scene, load_layout(self.scene, layout), rng)

    def start(self, rows: list[int], episodes: list[Episode] | None = None) -> np.ndarray:
        rows = [int(r) for r in rows]
        episodes = [self.sample(r) for r in rows] if episodes is None else list(episodes)
        for episode in episodes:
            if episode.scene != self.scene:
                raise ValueError(f"an episode in scene {episode.scene!r} for an env of scene {self.scene!r}")
        seeds = [int(self.rngs[r].integers(2**31)) for r in rows]
        frames = self.world.start(rows, episodes, seeds)
        for k, (row, episode) in enumerate(zip(rows, episodes)):
            self.states[row] = self.task.start(episode, self.world.chunk_frames)
            self.last_frames[row] = frames[k]
            self.obs[row] = to_chw(frames[k])
        return self.obs[rows].copy()

    def step(self, actions, keep_chunks: bool = False):
        actions = np.asarray(actions).reshape(-1)
        if actions.shape != (self.num_rows,):
            raise ValueError(f"need one move per row ({self.num_rows}), got shape {np.asarray(actions).shape}")
        outcomes, deltas = [], []
        for row, state in enumerate(self.states):
            if state is None or state.done:
                outcomes.append(None)
                deltas.append(None)
                continue
            move = self.task.check_action(actions[row])
            outcomes.append(self.task.advance(state, actions[row]))
            deltas.append(None if move == "stop" else move_delta(move))
        frames, chunks, poses = self.world.step(deltas, keep_chunks)
        self.env_poses = poses
        for row, delta in enumerate(deltas):
            if delta is not None:
                self.last_frames[row] = frames[row]
                self.obs[row] = to_chw(frames[row])
        return self.obs.copy(), outcomes, chunks

    def info(self, row: int) -> dict:
        state = self.states[row]
        info = state.summary()
        info["pose"] = state.pose.copy()
        info["world_pose"] = state.world_pose()
        return info

    def close(self) -> None:
        self.world.close()


class TaskEnv(gym.Env):
    """One episode at a time of a task in one world, on layouts drawn from ``layouts``.

    ``gym.make("minwm/Reach-v0", world="model")`` (the world model) or ``world="truth"``;
    ``reset(seed=..., options={"episode": Episode})`` replays a fixed start. ``info`` has
    ``success``, ``event`` (success, collision, bad_stop, timeout), ``return``, ``steps``,
    ``layout``, ``target``, ``target_colour``, ``pose`` (commanded, relative to the start) and
    ``world_pose``; ``info["frames"]`` the step's RGB frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 16}

    def __init__(self, task: str | Task = "reach", world: str = "truth", scene: str = "room",
                 layouts: str | list[int] = "0-15", size: int = 64, model=DEFAULT_MODEL,
                 render_mode: str | None = "rgb_array", num_threads: int | None = None,
                 memory: bool | int | None = None, **task_options):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self.rows = TaskRows(task, world, scene, layouts, 1, size, model, num_threads, memory, **task_options)
        self.task = self.rows.task
        self.observation_space, self.action_space = self.rows.observation_space, self.rows.action_space
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - {"episode"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: ['episode']")
        if seed is not None:
            self.rows.seed(seed)
        episode = options.get("episode")
        obs = self.rows.start([0], None if episode is None else [episode])[0]
        info = self.rows.info(0)
        info["frames"] = self.rows.last_frames[:1].copy()
        return obs, info

    def step(self, action):
        if self.rows.states[0] is None:
            raise RuntimeError("call reset() before step()")
        if self.rows.states[0].done:
            raise RuntimeError("the episode has ended: call reset()")
        obs, outcomes, chunks = self.rows.step(np.asarray([action]).reshape(1), keep_chunks=True)
        outcome = outcomes[0]
        info = self.rows.info(0)
        info["frames"] = chunks[0]
        return obs[0], outcome.reward, outcome.terminated, outcome.truncated, info

    def render(self):
        return self.rows.last_frames[0].copy() if self.render_mode == "rgb_array" else None

    def close(self):
        self.rows.close()


class TaskWrapper(gym.Wrapper):
    """A task around an env you made: ``minwm/World-v0`` or ``minwm/GroundTruth-v0`` (single env).

    Episodes start on one layout: a truth env's own (``scene_seed``), or ``layout`` (default 0)
    of ``scene`` for the world model, whose start view the wrapper renders and passes as
    ``options["image"]``. The reward and the end of an episode are :meth:`Task.advance` of the
    commanded moves, as everywhere here.
    """

    def __init__(self, env: gym.Env, task: str | Task = "reach", scene: str | None = None, layout: int | None = None,
                 **task_options):
        super().__init__(env)
        base = env.unwrapped
        self.task = make_task(task, **task_options)
        self.truth = hasattr(base, "scene") and hasattr(base, "renderer")
        if self.truth:
            if base.scene is None:
                raise ValueError("the ground-truth env has a user's MJCF scene: tasks need a procedural layout")
            if (scene not in (None, base.scene.name)) or (layout not in (None, base.scene.seed)):
                raise ValueError(f"this truth env is {base.scene.name} layout {base.scene.seed}; "
                                 f"got scene={scene!r}, layout={layout!r}")
            scene, layout = base.scene.name, base.scene.seed
            self.chunk_frames = base.chunk_frames
            self._renderer = None
        elif hasattr(base, "world_model"):
            scene = scene or base._world.starts.scene_name
            layout = 0 if layout is None else int(layout)
            self.chunk_frames = base._world.chunk_frames
            self._renderer = WorldRenderer(load_layout(scene, layout).scene, base._world.width, base._world.height)
        else:
            raise TypeError(f"TaskWrapper wraps minwm/World-v0 or minwm/GroundTruth-v0, got {type(base).__name__}")
        self.scene, self.layout = scene, layout
        usable_layouts(self.task, scene, [layout])
        shape = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (shape[-1], *shape[:2]), np.uint8)
        self.action_space = gym.spaces.Discrete(len(self.task.moves))
        self.state: EpisodeState | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = dict(options or {})
        episode = options.pop("episode", None)
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; known: ['episode']")
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        elif not hasattr(self, "_rng"):
            self._rng = np.random.default_rng()
        if episode is None:
            episode = self.task.sample(self.scene, load_layout(self.scene, self.layout), self._rng)
        if (episode.scene, episode.layout) != (self.scene, self.layout):
            raise ValueError(f"episode on {episode.scene} layout {episode.layout}, env on {self.scene} {self.layout}")
        if self.truth:
            obs, info = self.env.reset(seed=seed, options={"start_pose": episode.start})
        else:
            obs, info = self.env.reset(seed=seed, options={"image": self._renderer.render(episode.start)})
        self.state = self.task.start(episode, self.chunk_frames)
        return to_chw(obs), {**info, **self.state.summary()}

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        move = self.task.check_action(action)
        outcome = self.task.advance(self.state, action)
        obs, _, _, _, info = self.env.step(move_delta(move))
        info = {**info, **self.state.summary(), "commanded_pose": self.state.pose.copy()}
        return to_chw(obs), outcome.reward, outcome.terminated, outcome.truncated, info

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
        super().close()


class TaskRowsEnv(gym.Env):
    """All rows of one process as one Gymnasium env, for SB3's ``DummyVecEnv`` / ``SubprocVecEnv``.

    Observation ``(num_rows, 3, H, W)``, action one move per row; the rows restart on their own.
    The env-level reward, terminated and truncated are 0/False (the process never resets as a
    whole); the rows' own are in ``info["rows"]``, which :class:`RowsVecEnv` unpacks.
    """

    metadata = {"render_modes": []}
    render_mode = None

    def __init__(self, **kwargs):
        self.rows = TaskRows(**kwargs)
        n = self.rows.num_rows
        self.observation_space = gym.spaces.Box(0, 255, (n, *self.rows.observation_space.shape), np.uint8)
        self.action_space = gym.spaces.MultiDiscrete([self.rows.action_space.n] * n)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.rows.seed(seed if seed is not None else int(self.np_random.integers(2**31)))
        return self.rows.start(list(range(self.rows.num_rows))), {}

    def step(self, action):
        obs, outcomes, _ = self.rows.step(action)
        rows, done = [], []
        for row, outcome in enumerate(outcomes):
            info: dict[str, Any] = {}
            if outcome.terminated or outcome.truncated:
                summary = self.rows.info(row)
                info = {"terminal_observation": obs[row].copy(), "TimeLimit.truncated": outcome.truncated,
                        "is_success": outcome.success,
                        "episode": {"r": summary["return"], "l": summary["steps"], "t": 0.0},
                        "task": {k: summary[k] for k in INFO_KEYS}}
                done.append(row)
            rows.append((outcome.reward, outcome.terminated or outcome.truncated, info))
        if done:
            obs[done] = self.rows.start(done)
        return obs, 0.0, False, False, {"rows": rows}

    def close(self):
        self.rows.close()


def make_rows_env(**kwargs) -> TaskRowsEnv:
    """Picklable factory for ``SubprocVecEnv`` (``functools.partial(make_rows_env, ...)``)."""
    return TaskRowsEnv(**kwargs)


def rows_vec_env(processes: int = 1, **kwargs):
    """``processes`` × ``num_rows`` task rows as one SB3 ``VecEnv``: in this process (SB3's
    ``DummyVecEnv``) for 1, over SB3's ``SubprocVecEnv`` workers for more."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an int >= 1, got {processes!r}")
    factories = [partial(make_rows_env, **kwargs) for _ in range(processes)]
    # spawn: the workers are this process's own children, so their CPU time is counted when they end
    inner = DummyVecEnv(factories) if processes == 1 else SubprocVecEnv(factories, start_method="spawn")
    return RowsVecEnv(inner)


class RowsVecEnv(VecEnv):
    """Flattens the rows of the processes of an SB3 ``VecEnv`` of :class:`TaskRowsEnv` into SB3
    rows: row ``p * num_rows + r`` is row r of process p."""

    def __init__(self, inner):
        self.inner = inner
        batched = inner.observation_space
        self.rows_per_process = batched.shape[0]
        single = gym.spaces.Box(0, 255, batched.shape[1:], np.uint8)
        actions = gym.spaces.Discrete(int(inner.action_space.nvec[0]))
        super().__init__(inner.num_envs * self.rows_per_process, single, actions)

    def _flat(self, obs):
        return obs.reshape(self.num_envs, *obs.shape[2:])

    def seed(self, seed=None):
        return self.inner.seed(seed)

    def reset(self):
        obs = self.inner.reset()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self._flat(obs)

    def step_async(self, actions):
        self.inner.step_async(np.asarray(actions).reshape(self.inner.num_envs, self.rows_per_process))

    def step_wait(self):
        obs, _, _, infos = self.inner.step_wait()
        rewards, dones, out = [], [], []
        for info in infos:
            for reward, done, row_info in info["rows"]:
                rewards.append(reward)
                dones.append(done)
                out.append(row_info)
        return self._flat(obs), np.asarray(rewards, np.float32), np.asarray(dones, bool), out

    def close(self):
        self.inner.close()

    def _process_of(self, indices):
        return sorted({i // self.rows_per_process for i in self._get_indices(indices)})

    def get_attr(self, attr_name, indices=None):
        if attr_name == "render_mode":
            return [None for _ in self._get_indices(indices)]
        values = self.inner.get_attr(attr_name)
        return [values[i // self.rows_per_process] for i in self._get_indices(indices)]

    def set_attr(self, attr_name, value, indices=None):
        self.inner.set_attr(attr_name, value, self._process_of(indices))

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        return self.inner.env_method(method_name, *method_args, indices=self._process_of(indices), **method_kwargs)

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._get_indices(indices)]
