"""minWM's camera pose strings ↔ per-latent-frame deltas.

Grammar (minWM ``Wan21/wan_utils/camera_trajectory.py``, ``parse_trajectory``): the string is
split on commas; each segment, stripped of surrounding spaces, is ``key*count`` with a
lowercase key and a non-negative integer count of *latent frames*. ``"w*8,a*4"`` moves forward
for 8 latent frames, then left for 4: 12 deltas, 13 poses counting the identity start.

Keys, one step per latent frame in the current camera frame (OpenCV axes, see
:mod:`minwm_env.camera`), 0.08 scene units or 3°:

====  ==========================  ====  =========================
key   motion                      key   motion
====  ==========================  ====  =========================
w     forward  (dz = +0.08)       l     turn right (yaw = +3°)
s     backward (dz = −0.08)       j     turn left  (yaw = −3°)
d     right    (dx = +0.08)       i     look up    (pitch = +3°)
a     left     (dx = −0.08)       k     look down  (pitch = −3°)
u     up       (dy = −0.08)       dn    down       (dy = +0.08)
====  ==========================  ====  =========================

``stay`` (no motion) is a minwm extension that minWM itself does not parse.
"""

from __future__ import annotations

import re

import torch

TRANSLATION_STEP = 0.08
ROTATION_STEP_DEG = 3.0

KEY_DELTAS: dict[str, tuple[float, float, float, float, float, float]] = {
    "w": (0, 0, TRANSLATION_STEP, 0, 0, 0),
    "s": (0, 0, -TRANSLATION_STEP, 0, 0, 0),
    "d": (TRANSLATION_STEP, 0, 0, 0, 0, 0),
    "a": (-TRANSLATION_STEP, 0, 0, 0, 0, 0),
    "u": (0, -TRANSLATION_STEP, 0, 0, 0, 0),
    "dn": (0, TRANSLATION_STEP, 0, 0, 0, 0),
    "l": (0, 0, 0, ROTATION_STEP_DEG, 0, 0),
    "j": (0, 0, 0, -ROTATION_STEP_DEG, 0, 0),
    "i": (0, 0, 0, 0, ROTATION_STEP_DEG, 0),
    "k": (0, 0, 0, 0, -ROTATION_STEP_DEG, 0),
    "stay": (0, 0, 0, 0, 0, 0),
}
KEYS = tuple(KEY_DELTAS)
_SEGMENT = re.compile(r"([a-z]+)\*(\d+)")


def parse_pose_string(text: str) -> torch.Tensor:
    """``"w*8,a*4"`` → (12, 6) float64 deltas ``[dx, dy, dz, yaw, pitch, roll]``."""
    if not isinstance(text, str):
        raise TypeError(f"a pose string must be a str, got {type(text).__name__}")
    rows: list[tuple[float, ...]] = []
    for index, segment in enumerate(text.strip().split(",")):
        segment = segment.strip()
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ValueError(f"cannot parse segment {index} {segment!r} of pose string {text!r}: "
                             f"expected key*count, e.g. 'w*8', with keys {list(KEYS)}")
        key, count = match.group(1), int(match.group(2))
        if key not in KEY_DELTAS:
            raise ValueError(f"unknown key {key!r} in pose string {text!r}; keys: {list(KEYS)}")
        rows.extend([KEY_DELTAS[key]] * count)
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)


def key_of_delta(delta, atol: float = 1e-6) -> str:
    delta = torch.as_tensor(delta, dtype=torch.float64)
    for key, value in KEY_DELTAS.items():
        if torch.allclose(delta, torch.tensor(value, dtype=torch.float64), atol=atol, rtol=0):
            return key
    raise ValueError(f"delta {delta.tolist()} is not one pose-string key's step "
                     f"(0.08 units along one axis or 3° about one axis)")


def format_pose_string(deltas) -> str:
    """(N, 6) deltas, each exactly one key's step → the run-length pose string."""
    deltas = torch.as_tensor(deltas, dtype=torch.float64)
    if deltas.ndim != 2 or deltas.shape[1] != 6:
        raise ValueError(f"deltas must be (N, 6), got shape {tuple(deltas.shape)}")
    segments: list[list] = []
    for frame, delta in enumerate(deltas):
        try:
            key = key_of_delta(delta)
        except ValueError as err:
            raise ValueError(f"latent frame {frame}: {err}") from None
        if segments and segments[-1][0] == key:
            segments[-1][1] += 1
        else:
            segments.append([key, 1])
    return ",".join(f"{key}*{count}" for key, count in segments)
