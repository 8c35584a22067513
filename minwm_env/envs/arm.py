"""The arm ground truth: a MuJoCo robot arm pushing a puck, seen by a fixed camera, with the
world-model env's API.

    import gymnasium as gym, minwm_env
    env = gym.make("minwm/ArmTruth-v0", width=64, height=64)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step([8, 0, 0, 0])   # pan the arm 8° per latent frame
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

from ..conditioning import ActionSpec
from ..world.arm import FRAME_SKIP, ArmWorld, arm_action_spec
from ..world.renderer import OPENCV_TO_MUJOCO
from .common import Seconds, action_space, check_options, chunk_actions, observation_space

RESET_OPTIONS = ("joint_angles", "object_xy", "goal_xy")


class ArmTruthEnv(gym.Env):
    """A position-controlled robot arm and a puck on a table, stepped one chunk at a time.

    ## Description
    A ground truth where actions move things, not the camera: Gymnasium's Pusher arm (MuJoCo)
    with position servos on its joints, a puck it can push and a red goal disc, seen by a fixed
    camera. The chunk timing and observations are those of ``minwm/GroundTruth-v0`` and
    ``minwm/World-v0``, so a world model trained on ``minwm-data render --world arm`` clips can
    be scored against it frame by frame.

    ## Action Space
    ``Box(4,)`` float32: per latent frame, the change of the target angles of the shoulder pan,
    shoulder lift, elbow flex and wrist flex joints ``[d_shoulder_pan, d_shoulder_lift,
    d_elbow_flex, d_wrist_flex]`` in degrees, held for the chunk; an array of shape
    ``(chunk_frames, 4)`` gives one row per latent frame. Each row is spread evenly over the
    latent frame's ``temporal_factor`` RGB frames; targets stop at the joint ranges. Bounds:
    ±8° (``action_spec`` or ``max_delta_deg`` change them).

    ## Observation Space
    ``obs_mode="frame"``: the chunk's last RGB frame, ``uint8 (H, W, 3)``; ``"chunk"``: all
    ``chunk_frames · temporal_factor`` RGB frames of the step, ``uint8 (T, H, W, 3)``.

    ## Rewards
    0, unless ``reward_fn(observation, info) -> float`` is given (``info`` has the puck and goal
    positions, e.g. ``-np.linalg.norm(info["object_xy"] - info["goal_xy"])``).

    ## Starting State
    The arm at rest with its scoop raised somewhere over the work area, puck and goal at random
    reachable places on the table (seeded by ``reset(seed=...)``); or
    ``options={"joint_angles": [pan, lift, elbow, wrist] (degrees), "object_xy": (x, y),
    "goal_xy": (x, y)}`` (metres, MuJoCo world frame), any subset.

    ## Episode End
    Never terminates; truncation comes from ``max_episode_steps`` (registration: 200).

    ## Info
    ``joint_angles`` (4,) degrees and ``object_xy``, ``goal_xy`` (2,) metres after the step;
    ``arm_mask`` and ``object_mask`` boolean (H, W) masks of the last frame (MuJoCo
    segmentation); ``frames`` the chunk's frames; ``frame_index`` RGB index of the last frame;
    ``latency_s``; ``intrinsics`` of the fixed camera (normalised ``[fx/W, fy/H, cx/W, cy/H]``);
    ``pose`` the identity (4×4: the camera never moves), ``latent_poses`` one identity per
    latent frame, ``world_pose`` the camera's c2w in the world frame (OpenCV axes).

    ## Arguments
    ``width``, ``height``, ``chunk_frames`` (4), ``temporal_factor`` (4), ``frame_skip``
    (physics steps of 6.25 ms per RGB frame: 10, i.e. 16 fps), ``obs_mode``, ``reward_fn``,
    ``max_delta_deg`` (8), ``action_spec``, ``render_mode`` ("rgb_array").

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 16}

    def __init__(self, width: int = 64, height: int = 64, chunk_frames: int = 4, temporal_factor: int = 4,
                 frame_skip: int = FRAME_SKIP, obs_mode: str = "frame", reward_fn=None,
                 max_delta_deg: float | None = None, action_spec: ActionSpec | None = None,
                 render_mode: str | None = "rgb_array"):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        if obs_mode == "latent":
            raise ValueError("the arm ground-truth env renders pixels: obs_mode must be 'frame' or 'chunk'")
        if chunk_frames < 1 or temporal_factor < 1:
            raise ValueError(f"chunk_frames and temporal_factor must be >= 1, got {chunk_frames}, {temporal_factor}")
        if action_spec is not None and max_delta_deg is not None:
            raise ValueError("pass either action_spec or max_delta_deg, not both")
        default = arm_action_spec() if max_delta_deg is None else arm_action_spec(max_delta_deg)
        self.spec_actions = action_spec or default
        if self.spec_actions.names != default.names or self.spec_actions.discrete:
            raise ValueError(f"the arm env moves joint targets: its action spec must be continuous "
                             f"{default.names}, got {self.spec_actions.names}")
        self.chunk_frames, self.temporal_factor = chunk_frames, temporal_factor
        self.frames_per_chunk = chunk_frames * temporal_factor
        self.obs_mode, self.reward_fn, self.render_mode = obs_mode, reward_fn, render_mode
        self.action_space = action_space(self.spec_actions)
        self.observation_space = observation_space(obs_mode, height, width, self.frames_per_chunk)
        self.world = ArmWorld(width, height, frame_skip)
        self.intrinsics = self.world.intrinsics
        self._frame = None
        self._frame_index = 0

    # -- helpers -------------------------------------------------------------------------------
    def _world_pose(self) -> np.ndarray:
        world, c2w = self.world, np.eye(4)
        c2w[:3, :3] = world.data.cam_xmat[world.camera_id].reshape(3, 3) @ OPENCV_TO_MUJOCO
        c2w[:3, 3] = world.data.cam_xpos[world.camera_id]
        return c2w

    def _info(self, frames: np.ndarray, num_latent: int, latency: float) -> dict:
        masks = self.world.masks()
        return {"pose": np.eye(4), "world_pose": self._world_pose(),
                "latent_poses": np.repeat(np.eye(4)[None], num_latent, axis=0), "frame_index": self._frame_index,
                "frames": frames, "latency_s": Seconds(latency), "intrinsics": self.intrinsics.copy(),
                "joint_angles": self.world.joint_angles(),
                "object_xy": self.world.object_position(), "goal_xy": self.world.goal_position(),
                "arm_mask": masks["arm"], "object_mask": masks["object"]}

    # -- Gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = check_options(options, RESET_OPTIONS)
        began = time.perf_counter()
        self.world.reset(self.np_random, **options)  # checks the options' values before changing anything
        self._frame_index = 0
        frame = self.world.render()
        self._frame = frame
        frames = frame[None]
        info = self._info(frames, 1, time.perf_counter() - began)
        obs = frame if self.obs_mode == "frame" else np.repeat(frames, self.frames_per_chunk, axis=0)
        return obs, info

    def step(self, action):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        actions = chunk_actions(action, self.spec_actions, self.chunk_frames).double().numpy()
        began = time.perf_counter()
        frames = np.concatenate([self.world.apply(row, self.temporal_factor) for row in actions])
        self._frame = frames[-1]
        self._frame_index += len(frames)
        info = self._info(frames, self.chunk_frames, time.perf_counter() - began)
        obs = frames[-1] if self.obs_mode == "frame" else frames
        reward = 0.0 if self.reward_fn is None else float(self.reward_fn(obs, info))
        return obs, reward, False, False, info

    def render(self):
        if self.render_mode == "rgb_array":
            return None if self._frame is None else self._frame.copy()
        return None

    def close(self):
        self.world.close()
