"""Camera and action conditioning: action spaces and the zero-initialised branches (docs/design.md §5).

An :class:`ActionSpec` describes an action space (names, bounds, continuous or discrete);
camera deltas are one (:func:`camera_action_spec`), a differential-drive robot's ``[v, ω]``
another (:func:`diff_drive_action_spec`). A :class:`Conditioning` module holds the branches
a model was built with, each initialised so the pretrained backbone's output is unchanged:

* ``camera="prope"`` — an extra self-attention branch per layer with projective positional
  encoding (PRoPE): per token ``P = lift(K)·w2c``; queries are transformed by Pᵀ, keys and
  values by P⁻¹, the attention output by P, then a zero-initialised projection adds it to
  the layer's attention output (as minWM: the layer's normalised q/k/v before RoPE, the
  whole head dimension in 4×4 blocks, principal point zeroed in K).
* ``camera="plucker"`` — 6-channel Plücker rays per latent pixel, patchified like the
  latents, added after the patch embedding through a zero-initialised linear layer.
* ``action_spec=...`` — per-latent-frame actions, normalised by the spec, embedded by a
  small MLP (last layer zero-initialised) and added to the frame's timestep embedding, so
  they steer every block's modulation.

The branch weights save and load apart from the backbone (``conditioning.safetensors`` and
``conditioning.json``), so a user can train only their conditioning on a frozen backbone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from . import camera as cam
from .integrity import check_files, check_finite, describe_non_finite, non_finite, write_manifest
from .jsonfile import read_json

CAMERA_MODES = ("none", "prope", "plucker")
WEIGHTS_FILE = "conditioning.safetensors"
CONFIG_FILE = "conditioning.json"


@dataclass(frozen=True)
class ActionSpec:
    """An action space: one action vector per latent frame.

    Continuous actions are floats in [low, high] per component. Discrete actions are integers
    in {low, ..., high} per component (a key that is up or down: 0..1; a choice among n: 0..n-1).
    Values outside the bounds raise, unless ``clip`` asks for clipping.
    """

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    discrete: bool = False
    clip: bool = False
    units: tuple[str, ...] = ()
    description: str = ""
    name: str = field(default="", compare=False)
    """what data, models and env call this space ("camera", "pusher-arm", a spec file's own name);
    not part of equality: two specs with the same components are the same space"""

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"an ActionSpec's name must be a string, got {type(self.name).__name__}")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        object.__setattr__(self, "units", tuple(self.units))
        if not self.names:
            raise ValueError("an ActionSpec needs at least one named component")
        if not (len(self.names) == len(self.low) == len(self.high)):
            raise ValueError(f"names, low and high must have one entry per component: "
                             f"{len(self.names)}, {len(self.low)}, {len(self.high)}")
        if self.units and len(self.units) != len(self.names):
            raise ValueError(f"units must be empty or one per component, got {len(self.units)}")
        for name, lo, hi in zip(self.names, self.low, self.high):
            if not lo < hi:
                raise ValueError(f"component {name!r}: low {lo} must be below high {hi}")
            if self.discrete and (lo != int(lo) or hi != int(hi)):
                raise ValueError(f"component {name!r}: discrete bounds must be integers, got [{lo}, {hi}]")

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def feature_dim(self) -> int:
        """Width of the normalised features the embedding network reads."""
        if not self.discrete:
            return self.dim
        return int(sum(hi - lo + 1 for lo, hi in zip(self.low, self.high)))

    def neutral(self) -> torch.Tensor:
        """The action that means "nothing": zero where the bounds allow it, else ``low``."""
        values = [0.0 if lo <= 0.0 <= hi else lo for lo, hi in zip(self.low, self.high)]
        return torch.tensor(values, dtype=torch.float32)

    def validate(self, actions) -> torch.Tensor:
        """Check (..., dim) actions; returns them as float32 (clipped only if ``clip``)."""
        actions = torch.as_tensor(actions)
        if actions.dtype == torch.bool or not (actions.is_floating_point() or actions.dtype in
                                                (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"actions must be a real-valued array, got dtype {actions.dtype}")
        if actions.ndim == 0 or actions.shape[-1] != self.dim:
            raise ValueError(f"actions must have last dimension {self.dim} {list(self.names)}, "
                             f"got shape {tuple(actions.shape)}")
        actions = actions.to(torch.float32)
        if not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        low, high = torch.tensor(self.low, device=actions.device), torch.tensor(self.high, device=actions.device)
        if self.discrete and (actions != actions.round()).any():
            raise ValueError(f"discrete actions must be integers, got {actions[actions != actions.round()][:3].tolist()}")
        outside = (actions < low) | (actions > high)
        if outside.any():
            if not self.clip:
                index = outside.nonzero()[0].tolist()
                component = self.names[index[-1]]
                raise ValueError(f"action {component!r} = {actions[tuple(index)].item():g} is outside its bounds "
                                 f"[{self.low[index[-1]]:g}, {self.high[index[-1]]:g}] (spec with clip=False)")
            actions = torch.minimum(torch.maximum(actions, low), high)
        return actions

    def features(self, actions: torch.Tensor) -> torch.Tensor:
        """Validated (..., dim) actions → (..., feature_dim) network inputs in [-1, 1]."""
        low = torch.tensor(self.low, device=actions.device)
        high = torch.tensor(self.high, device=actions.device)
        if not self.discrete:
            return 2 * (actions - low) / (high - low) - 1
        parts = [nn.functional.one_hot((actions[..., i] - lo).long(), int(hi - lo + 1))
                 for i, (lo, hi) in enumerate(zip(self.low, self.high))]
        return torch.cat(parts, dim=-1).to(actions.dtype)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ActionSpec":
        if not isinstance(data, dict):
            raise ValueError(f"an action spec is a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        if set(data) - known:
            raise ValueError(f"unknown ActionSpec fields {sorted(set(data) - known)} (known: {sorted(known)})")
        missing = [key for key in ("names", "low", "high") if key not in data]
        if missing:
            raise ValueError(f"an action spec needs {missing}")
        for key in ("names", "low", "high", "units"):
            if key in data and not isinstance(data[key], (list, tuple)):
                raise ValueError(f"action spec field {key!r} must be a list, got {data[key]!r}")
        for key in ("discrete", "clip"):
            if key in data and not isinstance(data[key], bool):
                raise ValueError(f"action spec field {key!r} must be true or false, got {data[key]!r}")
        try:
            spec = cls(**data)
        except TypeError as err:  # e.g. a bound that is not a number
            raise ValueError(f"invalid action spec: {err}") from err
        if not spec.name and spec.same_space(camera_action_spec()):  # saved before specs had names
            spec = replace(spec, name="camera")
        return spec

    @classmethod
    def from_file(cls, path: str | Path) -> "ActionSpec":
        """Read a spec file: a JSON object ``{"name", "names", "low", "high", "discrete"?, "clip"?,
        "units"?, "description"?}`` (docs/robots.md). Its name defaults to the file's stem."""
        path = Path(path)
        try:
            data = read_json(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read the action spec file {path}: {err}") from err
        try:
            spec = cls.from_dict(data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err
        return spec if spec.name else replace(spec, name=path.stem)

    def save(self, path: str | Path) -> Path:
        """Write this spec as a spec file (what :meth:`from_file` reads)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def describe(self) -> str:
        """One line naming the space and its components, for error messages."""
        kind = "discrete" if self.discrete else "continuous"
        bounds = ", ".join(f"{n} [{lo:g}, {hi:g}]" for n, lo, hi in zip(self.names, self.low, self.high))
        return f"{self.name or 'unnamed'} ({kind}: {bounds})"

    def same_space(self, other: "ActionSpec") -> bool:
        """Whether ``other`` has the same components, bounds and kind (names of the specs aside)."""
        return (self.names, self.low, self.high, self.discrete) == (other.names, other.low, other.high,
                                                                     other.discrete)


def camera_action_spec(max_translation: float = 0.16, max_rotation_deg: float = 6.0, clip: bool = False) -> ActionSpec:
    """Camera deltas ``[dx, dy, dz, yaw, pitch, roll]`` (scene units, degrees) per latent frame.

    The default bounds are twice minWM's step (0.08 units, 3°)."""
    t, r = max_translation, max_rotation_deg
    return ActionSpec(names=cam.DELTA_NAMES, low=(-t, -t, -t, -r, -r, -r), high=(t, t, t, r, r, r), clip=clip,
                      units=("units", "units", "units", "deg", "deg", "deg"),
                      description="camera delta in the current camera frame (OpenCV axes)", name="camera")


def diff_drive_action_spec(max_speed: float = 0.16, max_turn_deg: float = 6.0) -> ActionSpec:
    """A differential-drive robot: forward speed and turn rate per latent frame."""
    return ActionSpec(names=("v", "omega"), low=(-max_speed, -max_turn_deg), high=(max_speed, max_turn_deg),
                      units=("units/frame", "deg/frame"), description="differential drive [v, ω]", name="diff-drive")


# minWM / WorldPlay's discrete action label (HunyuanVideo-1.5 ``action_in``): 9 translation classes
# × 9 rotation classes, label = 9 · translation + rotation, 0 = no motion. The class of a flag set
# (forward/back/right/left or yaw right/left/pitch up/down), in minWM's table order:
_LABEL_CLASSES = {(0, 0, 0, 0): 0, (1, 0, 0, 0): 1, (0, 1, 0, 0): 2, (0, 0, 1, 0): 3, (0, 0, 0, 1): 4,
                  (1, 0, 1, 0): 5, (1, 0, 0, 1): 6, (0, 1, 1, 0): 7, (0, 1, 0, 1): 8}
LABEL_MOVE_THRESHOLD = 0.01  # scene units: a smaller translation is no translation
LABEL_TURN_THRESHOLD_DEG = 0.05


def is_minwm_label_spec(spec: ActionSpec | None) -> bool:
    """Whether ``spec`` is minWM's 81-way discrete action label (a converted ``action_in``)."""
    return (spec is not None and spec.discrete and spec.names == ("minwm_action",) and spec.low == (0.0,)
            and spec.high == (80.0,))


def minwm_action_labels(deltas) -> torch.Tensor:
    """(..., 6) camera deltas → (..., 1) float labels in minWM's 81-way action space, by the rule
    its training data uses (minWM ``HY15/trainer/dataset_camera/action_utils.py``
    ``discretize_poses_to_actions``; WorldPlay's ``pose_to_input`` is the same): from the relative
    pose ``T`` of the step, the translation ``t = T[:3, 3]`` counts as forward / back when its
    unit vector's z exceeds ±cos 60°, right / left likewise on x (y is ignored), none when
    ``|t| <= 0.01``; the rotation's extrinsic x-y-z Euler angles give yaw right / left (y) and
    pitch up / down (x) beyond ±0.05°; roll is ignored. (minWM's pose-string path labels ``a``
    and ``d`` the other way round; the labels its models were trained on are these.)"""
    transform = cam.delta_to_matrix(deltas)
    t = transform[..., :3, 3]
    norm = t.norm(dim=-1, keepdim=True)
    unit = t / norm.clamp_min(1e-12)
    moving = norm[..., 0] > LABEL_MOVE_THRESHOLD
    r = transform[..., :3, :3]
    pitch = torch.rad2deg(torch.atan2(r[..., 2, 1], r[..., 2, 2]))  # about x
    yaw = torch.rad2deg(torch.asin((-r[..., 2, 0]).clamp(-1, 1)))  # about y
    flags_t = torch.stack([moving & (unit[..., 2] > 0.5), moving & (unit[..., 2] < -0.5),
                           moving & (unit[..., 0] > 0.5), moving & (unit[..., 0] < -0.5)], dim=-1)
    flags_r = torch.stack([yaw > LABEL_TURN_THRESHOLD_DEG, yaw < -LABEL_TURN_THRESHOLD_DEG,
                           pitch > LABEL_TURN_THRESHOLD_DEG, pitch < -LABEL_TURN_THRESHOLD_DEG], dim=-1)

    def classes(flags):
        out = torch.zeros(flags.shape[:-1], dtype=torch.long)
        for key, value in _LABEL_CLASSES.items():
            out[(flags.long() == torch.tensor(key)).all(-1)] = value
        return out
    return (9 * classes(flags_t) + classes(flags_r)).unsqueeze(-1).float()


def _arm_action_spec() -> ActionSpec:
    from .world.arm import arm_action_spec  # MuJoCo's arm world, imported only when asked for
    return arm_action_spec()


NAMED_ACTION_SPECS = {"camera": camera_action_spec, "diff-drive": diff_drive_action_spec,
                      "pusher-arm": _arm_action_spec}
"""Action spaces known by name to ``minwm-data``, ``minwm-train`` and the envs; anything else is
a spec file (:meth:`ActionSpec.from_file`)."""


def load_action_spec(value: "str | Path | ActionSpec | None") -> ActionSpec | None:
    """A spec from what a user typed: ``None``/``"none"`` (no actions), a name of
    :data:`NAMED_ACTION_SPECS`, or the path of a spec file (``.json``)."""
    if value is None or isinstance(value, ActionSpec):
        return value
    text = str(value)
    if text == "none":
        return None
    if text in NAMED_ACTION_SPECS:
        return NAMED_ACTION_SPECS[text]()
    if text.endswith(".json") or Path(text).is_file():
        if not Path(text).is_file():
            raise FileNotFoundError(f"action spec file {text} does not exist")
        return ActionSpec.from_file(text)
    raise ValueError(f"unknown action space {text!r}: use one of {['none', *NAMED_ACTION_SPECS]} or the path "
                     "of a spec file (JSON with names, low, high; docs/robots.md)")


def check_same_space(expected: ActionSpec | None, actual: ActionSpec | None, expected_from: str,
                     actual_from: str) -> None:
    """Raise a ValueError naming both sides unless they are the same action space."""
    def show(spec):
        return "no actions" if spec is None else spec.describe()
    if (expected is None) != (actual is None) or (expected is not None and not expected.same_space(actual)):
        raise ValueError(f"action spaces differ: {expected_from} has {show(expected)}, but {actual_from} has "
                         f"{show(actual)}")


@dataclass(frozen=True)
class ConditioningConfig:
    camera: str = "none"
    """camera injection: "none", "prope" (attention branch) or "plucker" (ray embedding)"""
    action_spec: ActionSpec | None = None
    """per-latent-frame actions embedded into the timestep embedding (None: no action branch)"""
    action_hidden_dim: int = 256
    """width of the action embedding MLP"""

    def __post_init__(self):
        if self.camera not in CAMERA_MODES:
            raise ValueError(f"camera must be one of {CAMERA_MODES}, got {self.camera!r}")

    @property
    def uses_camera(self) -> bool:
        return self.camera != "none"

    def to_dict(self) -> dict:
        return {"camera": self.camera, "action_hidden_dim": self.action_hidden_dim,
                "action_spec": None if self.action_spec is None else self.action_spec.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "ConditioningConfig":
        known = {"camera", "action_spec", "action_hidden_dim"}
        if set(data) - known:
            raise ValueError(f"unknown conditioning fields {sorted(set(data) - known)}")
        spec = data.get("action_spec")
        return cls(camera=data.get("camera", "none"), action_hidden_dim=data.get("action_hidden_dim", 256),
                   action_spec=None if spec is None else ActionSpec.from_dict(spec))


@dataclass
class FrameConditions:
    """Per-latent-frame conditions of one forward, aligned with its frames.

    w2c (B, F, 4, 4) relative to the episode's first frame; intrinsics (B, F, 4) normalised;
    actions (B, F, d) validated by the spec.
    """

    w2c: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    actions: torch.Tensor | None = None

    def repeat(self, times: int) -> "FrameConditions":
        def rep(x):
            return None if x is None else x.repeat(times, *([1] * (x.ndim - 1)))
        return FrameConditions(rep(self.w2c), rep(self.intrinsics), rep(self.actions))

    @staticmethod
    def cat(items: "list[FrameConditions]", dim: int = 1) -> "FrameConditions":
        def join(name):
            values = [getattr(c, name) for c in items]
            return None if values[0] is None else torch.cat(values, dim=dim)
        return FrameConditions(join("w2c"), join("intrinsics"), join("actions"))

    def select(self, rows: list[int]) -> "FrameConditions":
        def pick(x):
            return None if x is None else x[rows]
        return FrameConditions(pick(self.w2c), pick(self.intrinsics), pick(self.actions))

    def frames(self, index) -> "FrameConditions":
        def pick(x):
            return None if x is None else x[:, index]
        return FrameConditions(pick(self.w2c), pick(self.intrinsics), pick(self.actions))


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@dataclass
class PRoPEInputs:
    """Per-frame projections for the PRoPE branch, in the compute dtype."""

    projection: torch.Tensor  # (B, F, 4, 4) P = lift(K) · w2c
    inverse: torch.Tensor  # (B, F, 4, 4) P⁻¹
    tokens_per_frame: int
    out_projections: nn.ModuleList = field(repr=False)


def apply_frame_transform(x: torch.Tensor, matrices: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """x (B, heads, F·T, D) with D in 4-blocks; matrices (B, F, 4, 4) → each block x ↦ M_f x."""
    batch, heads, length, head_dim = x.shape
    frames = matrices.shape[1]
    blocks = x.reshape(batch, heads, frames, tokens_per_frame, head_dim // 4, 4)
    out = torch.einsum("bfij,bhftkj->bhftki", matrices.to(x.dtype), blocks)
    return out.reshape(batch, heads, length, head_dim)


class Conditioning(nn.Module):
    """The conditioning branches of one backbone (see the module docstring)."""

    def __init__(self, config: ConditioningConfig, *, dim: int, num_layers: int, head_dim: int,
                 patch: tuple[int, int]):
        super().__init__()
        self.config = config
        self.patch = tuple(patch)
        self.plucker = self.prope_out = self.action_mlp = None
        if config.camera == "plucker":
            self.plucker = _zero_linear(6 * patch[0] * patch[1], dim)
        if config.camera == "prope":
            if head_dim % 4:
                raise ValueError(f"PRoPE transforms heads in 4-blocks; head_dim {head_dim} is not divisible by 4")
            self.prope_out = nn.ModuleList([_zero_linear(dim, dim) for _ in range(num_layers)])
        if config.action_spec is not None:
            hidden = config.action_hidden_dim
            self.action_mlp = nn.Sequential(nn.Linear(config.action_spec.feature_dim, hidden), nn.SiLU(),
                                            _zero_linear(hidden, dim))

    # -- what each branch contributes to one forward ---------------------------------------
    def check(self, conditions: FrameConditions | None, batch: int, num_frames: int) -> None:
        needs_camera = self.config.uses_camera
        needs_actions = self.config.action_spec is not None
        if conditions is None:
            if needs_camera or needs_actions:
                raise ValueError(f"this model is conditioned ({self.describe()}): pass FrameConditions")
            return
        if needs_camera:
            if conditions.w2c is None or conditions.intrinsics is None:
                raise ValueError(f"camera conditioning ({self.config.camera}) needs w2c and intrinsics per frame")
            if conditions.w2c.shape != (batch, num_frames, 4, 4) or conditions.intrinsics.shape != (batch, num_frames, 4):
                raise ValueError(f"w2c must be ({batch}, {num_frames}, 4, 4) and intrinsics ({batch}, {num_frames}, 4); "
                                 f"got {tuple(conditions.w2c.shape)} and {tuple(conditions.intrinsics.shape)}")
        if needs_actions:
            spec = self.config.action_spec
            if conditions.actions is None or conditions.actions.shape != (batch, num_frames, spec.dim):
                got = None if conditions.actions is None else tuple(conditions.actions.shape)
                raise ValueError(f"actions must be ({batch}, {num_frames}, {spec.dim}) {list(spec.names)}, got {got}")

    def describe(self) -> str:
        parts = [f"camera={self.config.camera}"]
        if self.config.action_spec is not None:
            parts.append(f"actions={list(self.config.action_spec.names)}")
        return ", ".join(parts)

    def frame_embedding(self, conditions: FrameConditions | None, dtype) -> torch.Tensor | None:
        """(B, F, dim) added to each frame's timestep embedding, or None."""
        if self.action_mlp is None:
            return None
        # Actions are validated where they enter (generator, env, dataset), not in every forward.
        features = self.config.action_spec.features(conditions.actions.float())
        return self.action_mlp(features.to(dtype))

    def token_embedding(self, conditions: FrameConditions | None, latent_height: int, latent_width: int,
                        dtype) -> torch.Tensor | None:
        """(B, F·h·w, dim) added after the patch embedding (Plücker rays), or None."""
        if self.plucker is None:
            return None
        w2c = conditions.w2c
        batch, num_frames = w2c.shape[:2]
        c2w = cam.invert_pose(w2c.detach().cpu())
        rays = cam.plucker_rays(c2w, conditions.intrinsics.detach().cpu(), latent_height, latent_width)
        ph, pw = self.patch
        rays = rays.reshape(batch, num_frames, 6, latent_height // ph, ph, latent_width // pw, pw)
        rays = rays.permute(0, 1, 3, 5, 2, 4, 6).reshape(batch, -1, 6 * ph * pw)  # token order: frame, row, col
        return self.plucker(rays.to(device=w2c.device, dtype=dtype))

    def prope_inputs(self, conditions: FrameConditions | None, tokens_per_frame: int, dtype) -> PRoPEInputs | None:
        if self.prope_out is None:
            return None
        w2c = cam._f64(conditions.w2c.detach().cpu())
        intrinsics = cam._f64(conditions.intrinsics.detach().cpu()).clone()
        intrinsics[..., 2:] = 0  # minWM zeroes the principal point in PRoPE's K
        lifted = cam.intrinsics_matrix(intrinsics)
        projection = lifted @ w2c
        inverse = cam.invert_pose(w2c) @ torch.linalg.inv(lifted)
        device = conditions.w2c.device
        return PRoPEInputs(projection.to(device=device, dtype=torch.float32),
                           inverse.to(device=device, dtype=torch.float32), tokens_per_frame, self.prope_out)

    # -- saving apart from the backbone ---------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """The branch weights, their sha256 manifest and the JSON spec; NaN or inf is refused."""
        folder = Path(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if counts := non_finite(state):
            raise ValueError(f"refusing to save conditioning branches with NaN or inf weights to {folder}: "
                             f"{describe_non_finite(state, counts)}")
        folder.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(state, folder / WEIGHTS_FILE)
        write_manifest(folder, [WEIGHTS_FILE])
        (folder / CONFIG_FILE).write_text(json.dumps({**self.config.to_dict(), "patch": list(self.patch)}, indent=2) + "\n")

    def load_weights(self, folder: str | Path) -> None:
        """Load branch weights saved by :meth:`save`, checked against the folder's sha256
        manifest (if it has one) and for NaN or inf."""
        path = Path(folder) / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        check_files(folder, [WEIGHTS_FILE])
        try:
            state = safetensors.torch.load_file(path)
        except Exception as err:  # safetensors raises several types for damaged files
            raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
        check_finite(state, path)
        expected = self.state_dict()
        bad = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if bad:
            raise ValueError(f"{path} does not match the conditioning config ({self.describe()}): {bad[:4]}")
        self.load_state_dict(state)


def read_conditioning_config(folder: str | Path) -> ConditioningConfig:
    path = Path(folder) / CONFIG_FILE
    data = read_json(path)
    data.pop("patch", None)
    try:
        return ConditioningConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
