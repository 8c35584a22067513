"""What the world-model env and the ground-truth env share: spaces, action parsing, chunk timing.

One ``step`` is one chunk of ``chunk_frames`` latent frames = ``chunk_frames · temporal_factor``
RGB frames (16 with the defaults). The action is the camera delta of docs/design.md §5 (or another
:class:`~minwm_env.conditioning.ActionSpec`), either one vector held for the whole chunk, shape
(d,), or one per latent frame, shape (chunk_frames, d).
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from ..conditioning import ActionSpec

OBS_MODES = ("frame", "chunk", "latent")


def action_space(spec: ActionSpec) -> spaces.Space:
    """The Gymnasium space of one step's action: (d,) held for the chunk."""
    if spec.discrete:
        low = np.array(spec.low, dtype=np.int64)
        return spaces.MultiDiscrete((np.array(spec.high, dtype=np.int64) - low + 1), start=low)
    return spaces.Box(np.array(spec.low, dtype=np.float32), np.array(spec.high, dtype=np.float32), dtype=np.float32)


def observation_space(obs_mode: str, height: int, width: int, frames_per_chunk: int,
                      latent_shape: tuple[int, ...] | None = None) -> spaces.Box:
    if obs_mode == "frame":
        return spaces.Box(0, 255, (height, width, 3), dtype=np.uint8)
    if obs_mode == "chunk":
        return spaces.Box(0, 255, (frames_per_chunk, height, width, 3), dtype=np.uint8)
    if obs_mode == "latent":
        if latent_shape is None:
            raise ValueError("obs_mode='latent' needs a model with a latent space")
        return spaces.Box(-np.inf, np.inf, latent_shape, dtype=np.float32)
    raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")


def chunk_actions(action, spec: ActionSpec, chunk_frames: int) -> torch.Tensor:
    """A step's action → validated (chunk_frames, d) float32 actions (one per latent frame)."""
    if isinstance(action, (list, tuple)):
        action = np.asarray(action)
    if not isinstance(action, (np.ndarray, torch.Tensor, np.generic)):
        raise TypeError(f"action must be an array of shape ({spec.dim},) or ({chunk_frames}, {spec.dim}), "
                        f"got {type(action).__name__}")
    array = torch.as_tensor(np.asarray(action) if not isinstance(action, torch.Tensor) else action)
    if array.shape == (spec.dim,):
        array = array.unsqueeze(0).expand(chunk_frames, -1)
    elif array.shape != (chunk_frames, spec.dim):
        raise ValueError(f"action must have shape ({spec.dim},) (held for the chunk) or ({chunk_frames}, {spec.dim}) "
                         f"(one per latent frame) for {list(spec.names)}; got {tuple(array.shape)}")
    return spec.validate(array)


def check_options(options: dict | None, known: tuple[str, ...]) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; known: {list(known)}")
    return options


class Seconds(float):
    """A wall-clock duration in ``info``: a float that compares equal to any other duration.

    Timings describe the machine, not the world: two steps with the same seed and actions must
    have equal infos (Gymnasium's determinism checks compare them), whatever the clock said.
    Arithmetic and formatting are those of a float; use ``float(x)`` for a plain value.
    """

    def __eq__(self, other):
        return isinstance(other, Seconds)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = float.__hash__


def stack_infos(infos: dict[int, dict], num_envs: int) -> dict:
    """Per-row infos ``{row: info}`` → one vector-env info in Gymnasium's layout (``SyncVectorEnv``'s):
    ``out[key][i]`` is row i's value and the bool mask ``out["_" + key]`` marks the rows that have it.

    Arrays of one shape and dtype stack into one array, numbers into a numeric array, dicts
    recursively; anything else (None beside arrays, shapes that differ) into an object array.
    """
    keys = list(dict.fromkeys(key for info in infos.values() for key in info))
    out = {}
    for key in keys:
        values = {row: info[key] for row, info in infos.items() if key in info}
        mask = np.zeros(num_envs, dtype=bool)
        mask[list(values)] = True
        out[key], out[f"_{key}"] = _stack_values(values, num_envs), mask
    return out


def _stack_values(values: dict[int, object], num_envs: int):
    items = list(values.values())
    first = items[0]
    if all(isinstance(v, dict) for v in items):
        return stack_infos(values, num_envs)
    if all(isinstance(v, np.ndarray) and v.shape == first.shape and v.dtype == first.dtype for v in items):
        array = np.zeros((num_envs, *first.shape), dtype=first.dtype)
    elif all(isinstance(v, (bool, int, float, np.number)) for v in items):
        array = np.zeros(num_envs, dtype=np.asarray(items).dtype)
    else:
        array = np.full(num_envs, None, dtype=object)
    for row, value in values.items():
        array[row] = value
    return array
