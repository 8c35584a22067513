"""The ground-truth world: a rendered MuJoCo scene with the world-model env's API.

    import gymnasium as gym, minwm_env
    env = gym.make("minwm/GroundTruth-v0", scene="gallery", width=64, height=64)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step([0, 0, 0.08, 0, 0, 0])   # forward
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

from .. import camera
from ..conditioning import ActionSpec, camera_action_spec
from ..world.paths import random_start
from ..world.renderer import WorldRenderer, look_pose
from ..world.scenes import Scene, make_scene
from .common import Seconds, action_space, check_options, chunk_actions, observation_space


class GroundTruthEnv(gym.Env):
    """A camera moving through a rendered 3D world, stepped one chunk at a time.

    ## Description
    The truth the world model imitates: the same actions, observations and chunk timing as
    ``minwm/World-v0``, but every frame is rendered exactly by MuJoCo from the true camera
    pose. Use it to score world-model rollouts frame by frame, or point it at your own MJCF
    scene (``mjcf=...``) to get a ground-truth env of your world.

    ## Action Space
    ``Box(6,)`` float32: the camera delta ``[dx, dy, dz, yaw, pitch, roll]`` per latent frame in
    the current camera frame (scene units, degrees; OpenCV axes: x right, y down, z forward),
    held for the chunk; an array of shape ``(chunk_frames, 6)`` gives one delta per latent
    frame. Bounds: ±0.16 units and ±6° (``action_spec`` changes them).

    ## Observation Space
    ``obs_mode="frame"``: the chunk's last RGB frame, ``uint8 (H, W, 3)``; ``"chunk"``: all
    ``chunk_frames · 4`` RGB frames of the step, ``uint8 (T, H, W, 3)``.

    ## Rewards
    0, unless ``reward_fn(observation, info) -> float`` is given.

    ## Starting State
    A random free position and heading in the scene (seeded by ``reset(seed=...)``), or
    ``options={"start_pose": c2w}`` (4×4, OpenCV, world frame).

    ## Episode End
    Never terminates; truncation comes from ``max_episode_steps`` (registration: 200).
    A translation that would enter a wall or object is blocked (rotations still apply) and
    ``info["collided"]`` is True; with a user's MJCF there is no collision model.

    ## Info
    ``pose`` c2w of the last frame relative to the episode start (4×4, float64, identity at
    reset); ``world_pose`` the same in the scene's world frame; ``latent_poses`` the chunk's
    per-latent-frame relative poses; ``frame_index`` RGB index of the last frame;
    ``frames`` the chunk's frames; ``latency_s``; ``collided``.

    ## Arguments
    ``scene`` (one of ``SCENE_NAMES``), ``scene_seed``, ``mjcf`` (path to your own scene),
    ``width``, ``height``, ``fov_y_deg``, ``chunk_frames`` (4), ``temporal_factor`` (4),
    ``obs_mode``, ``reward_fn``, ``action_spec``, ``render_mode`` ("rgb_array").

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 16}

    def __init__(self, scene: str | Scene = "room", scene_seed: int = 0, mjcf: str | None = None, width: int = 64,
                 height: int = 64, fov_y_deg: float = 60.0, chunk_frames: int = 4, temporal_factor: int = 4,
                 obs_mode: str = "frame", reward_fn=None, action_spec: ActionSpec | None = None,
                 render_mode: str | None = "rgb_array"):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        if obs_mode == "latent":
            raise ValueError("the ground-truth env renders pixels: obs_mode must be 'frame' or 'chunk'")
        self.scene = None if mjcf is not None else (scene if isinstance(scene, Scene) else make_scene(scene, scene_seed))
        self.renderer = WorldRenderer(mjcf if mjcf is not None else self.scene, width, height, fov_y_deg)
        self.spec_actions = action_spec or camera_action_spec()
        if self.spec_actions.names != camera.DELTA_NAMES:
            raise ValueError("the ground-truth env moves a camera: its action spec must be camera deltas "
                             f"{camera.DELTA_NAMES}; wrap it for other action spaces (minwm_env.envs.wrappers)")
        self.chunk_frames, self.temporal_factor = chunk_frames, temporal_factor
        self.frames_per_chunk = chunk_frames * temporal_factor
        self.obs_mode, self.reward_fn, self.render_mode = obs_mode, reward_fn, render_mode
        self.action_space = action_space(self.spec_actions)
        self.observation_space = observation_space(obs_mode, height, width, self.frames_per_chunk)
        self.intrinsics = self.renderer.intrinsics
        self._start = None
        self._pose = None  # relative c2w of the last frame
        self._frame = None
        self._frame_index = 0

    # -- helpers -------------------------------------------------------------------------------
    def _world(self, relative: np.ndarray) -> np.ndarray:
        return self._start @ relative

    def _free(self, relative: np.ndarray) -> bool:
        if self.scene is None:
            return True
        x, y, z = self._world(relative)[:3, 3]
        return self.scene.is_free(x, y, margin=0.2) and 0.1 < z < self.scene.wall_height - 0.1

    def _observation(self, frames: np.ndarray) -> np.ndarray:
        return frames[-1] if self.obs_mode == "frame" else frames

    def _info(self, frames, latent_poses, latency, collided) -> dict:
        return {"pose": self._pose.copy(), "world_pose": self._world(self._pose), "latent_poses": latent_poses,
                "frame_index": self._frame_index, "frames": frames, "latency_s": Seconds(latency), "collided": collided,
                "intrinsics": self.intrinsics.copy()}

    # -- Gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = check_options(options, ("start_pose",))
        if "start_pose" in options:
            start = np.asarray(options["start_pose"], dtype=np.float64)
            if start.shape != (4, 4) or not np.isfinite(start).all():
                raise ValueError(f"start_pose must be a finite 4x4 c2w matrix, got shape {start.shape}")
        elif self.scene is not None:
            start = random_start(self.scene, _PyRandom(self.np_random))
        else:
            start = look_pose(0.0, 0.0, 0.5, 90.0)  # a user's scene: at the origin, facing +y
        self._start, self._pose, self._frame_index = start, np.eye(4), 0
        began = time.perf_counter()
        frame = self.renderer.render(start)
        self._frame = frame
        frames = frame[None]
        info = self._info(frames, self._pose[None], time.perf_counter() - began, False)
        obs = frame if self.obs_mode == "frame" else np.repeat(frames, self.frames_per_chunk, axis=0)
        return obs, info

    def step(self, action):
        if self._start is None:
            raise RuntimeError("call reset() before step()")
        actions = chunk_actions(action, self.spec_actions, self.chunk_frames).double()
        began = time.perf_counter()
        pose, poses, latent_poses, collided = self._pose, [], [], False
        for delta in actions:
            step = camera.delta_to_matrix(delta).numpy()
            if not self._free(pose @ step):
                collided = True
                delta = delta.clone()
                delta[:3] = 0  # blocked: keep turning, do not move
                step = camera.delta_to_matrix(delta).numpy()
            for j in range(1, self.temporal_factor + 1):
                poses.append(pose @ camera.delta_to_matrix(delta * (j / self.temporal_factor)).numpy()
                             if j < self.temporal_factor else pose @ step)
            pose = pose @ step
            latent_poses.append(pose)
        frames = np.stack([self.renderer.render(self._world(p)) for p in poses])
        self._pose, self._frame = pose, frames[-1]
        self._frame_index += len(poses)
        info = self._info(frames, np.stack(latent_poses), time.perf_counter() - began, collided)
        obs = self._observation(frames)
        reward = 0.0 if self.reward_fn is None else float(self.reward_fn(obs, info))
        return obs, reward, False, False, info

    def render(self):
        if self.render_mode == "rgb_array":
            return None if self._frame is None else self._frame.copy()
        return None

    def close(self):
        self.renderer.close()


class _PyRandom:
    """``random.Random``-like access to the env's numpy generator (for ``random_start``)."""

    def __init__(self, generator: np.random.Generator):
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return float(self.generator.uniform(low, high))

