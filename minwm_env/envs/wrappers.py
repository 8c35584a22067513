"""Action adapters: other action spaces in front of a camera-delta env (world model or ground truth).

Each wrapper does one thing: it maps its own action to the camera delta the env expects
(``[dx, dy, dz, yaw, pitch, roll]`` per latent frame, held for the chunk).

Write your own in a few lines: subclass ``gymnasium.ActionWrapper``, set ``action_space``,
and return a camera delta (shape (6,), or (chunk_frames, 6)) from ``action``; check the
input and quote the bad value in the error::

    class Strafe(gym.ActionWrapper):
        def __init__(self, env, step=0.08):
            super().__init__(env)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
            self.step_size = step

        def action(self, action):
            side = float(np.asarray(action).reshape(-1)[0])
            if not -1.0 <= side <= 1.0:
                raise ValueError(f"Strafe action must be in [-1, 1], got {side}")
            return np.array([side * self.step_size, 0, 0, 0, 0, 0], np.float32)
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ..pose_strings import KEY_DELTAS


class KeyboardActions(gym.ActionWrapper):
    """``Discrete(n)`` keys of minWM's pose strings (w/s/a/d/u/dn move 0.08, l/j/i/k turn 3° per
    latent frame; ``stay`` waits). One step holds the key for the whole chunk."""

    def __init__(self, env: gym.Env, keys: tuple[str, ...] = ("stay", "w", "s", "a", "d", "l", "j", "i", "k")):
        super().__init__(env)
        unknown = [k for k in keys if k not in KEY_DELTAS]
        if unknown or not keys:
            raise ValueError(f"unknown keys {unknown}; keys: {list(KEY_DELTAS)}")
        self.keys = tuple(keys)
        self.action_space = gym.spaces.Discrete(len(self.keys))

    def action(self, action) -> np.ndarray:
        array = np.asarray(action)
        if array.shape not in ((), (1,)) or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"KeyboardActions takes one integer key index, got {action!r}")
        index = int(array.reshape(-1)[0])
        if not 0 <= index < len(self.keys):
            raise ValueError(f"key index {index} is outside [0, {len(self.keys)}) for keys {list(self.keys)}")
        return np.array(KEY_DELTAS[self.keys[index]], dtype=np.float32)


class DiffDriveActions(gym.ActionWrapper):
    """A differential-drive robot: ``[v, ω]`` = forward distance and turn (degrees, + right)
    per latent frame, mapped to the camera delta ``[0, 0, v, ω, 0, 0]``."""

    def __init__(self, env: gym.Env, max_speed: float = 0.16, max_turn_deg: float = 6.0):
        super().__init__(env)
        if max_speed <= 0 or max_turn_deg <= 0:
            raise ValueError(f"max_speed and max_turn_deg must be positive, got {max_speed}, {max_turn_deg}")
        self.max_speed, self.max_turn = max_speed, max_turn_deg
        self.action_space = gym.spaces.Box(np.array([-max_speed, -max_turn_deg], np.float32),
                                           np.array([max_speed, max_turn_deg], np.float32), dtype=np.float32)

    def action(self, action) -> np.ndarray:
        array = np.asarray(action, dtype=np.float64)
        if array.shape != (2,):
            raise ValueError(f"DiffDriveActions takes [v, omega], shape (2,), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"DiffDriveActions got a non-finite action {array.tolist()}")
        v, omega = array
        if abs(v) > self.max_speed or abs(omega) > self.max_turn:
            raise ValueError(f"DiffDriveActions action {array.tolist()} exceeds bounds "
                             f"|v| <= {self.max_speed}, |omega| <= {self.max_turn}")
        return np.array([0.0, 0.0, v, omega, 0.0, 0.0], dtype=np.float32)
