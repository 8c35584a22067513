"""The clip-folder format on disk: manifest, per-clip video and poses, and the writer.

See :mod:`minwm_env.data` (or ``docs/data_format.md``) for the layout. Everything that reads
or writes those files lives here, so the format is defined in exactly one place.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .. import camera
from ..jsonfile import read_json  # noqa: F401  (re-exported for the data modules)

FORMAT_NAME = "minwm-clips"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLIPS_DIR = "clips"
# The spec file of a dataset whose action space is not one of the named ones (minwm-data ingest
# --action-spec FILE copies it here); its name is what the clips' action_spec says.
SPEC_FILE = "action_spec.json"
# Wan's VAE compresses time 4×: latent frame k ↔ RGB frame 4k, so clips have 1 + 4k frames.
TEMPORAL_FACTOR = 4
PIXEL_FORMATS = ("yuv444p", "yuv420p")
_CLIP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A stored pose must be a rigid transform: R^T R = I within this tolerance.
RIGID_ATOL = 1e-3


def check_clip_id(clip_id: str, where: str = "") -> str:
    if not isinstance(clip_id, str) or _CLIP_ID.fullmatch(clip_id) is None:
        raise ValueError(f"{where + ': ' if where else ''}clip id {clip_id!r} must be letters, digits, "
                         f"'_', '.' or '-' (starting with a letter or digit)")
    return clip_id


def check_num_frames(num_frames: int, what: str = "num_frames") -> int:
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_FACTOR:
        raise ValueError(f"{what} must be 1 + {TEMPORAL_FACTOR}k (1, 5, 9, 13, 17, ...), got {num_frames}")
    return num_frames


def longest_valid_length(num_frames: int) -> int:
    """The largest 1 + 4k that is <= ``num_frames`` (0 when there are no frames)."""
    return 0 if num_frames < 1 else 1 + TEMPORAL_FACTOR * ((num_frames - 1) // TEMPORAL_FACTOR)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any, indent: int | None = 1) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=indent) + "\n").encode())


# ----------------------------------------------------------------------------------------------
# Poses


def check_rigid(pose: np.ndarray, where: str) -> np.ndarray:
    """(T, 4, 4) finite rigid transforms with bottom row [0, 0, 0, 1], else a ValueError naming ``where``."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.ndim != 3 or pose.shape[1:] != (4, 4):
        raise ValueError(f"{where}: poses must be (T, 4, 4), got shape {pose.shape}")
    if not np.isfinite(pose).all():
        bad = int(np.argwhere(~np.isfinite(pose).all(axis=(1, 2)))[0, 0])
        raise ValueError(f"{where}: pose {bad} contains NaN or inf")
    bottom = np.abs(pose[:, 3] - np.array([0, 0, 0, 1.0])).max(axis=1)
    rotation = pose[:, :3, :3]
    error = np.abs(rotation.transpose(0, 2, 1) @ rotation - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(rotation)
    for index in range(pose.shape[0]):
        if bottom[index] > 1e-6:
            raise ValueError(f"{where}: pose {index} has bottom row {pose[index, 3].tolist()}, expected [0, 0, 0, 1]")
        if error[index] > RIGID_ATOL or det[index] < 0:
            raise ValueError(f"{where}: pose {index} is not a rigid transform (|R^T R - I| = {error[index]:.2g}, "
                             f"det R = {det[index]:.3g}); poses must be rotation + translation")
    return pose


def orthonormalize(pose: np.ndarray) -> np.ndarray:
    """(T, 4, 4) near-rigid poses (see :func:`check_rigid`) with each rotation replaced by the
    nearest rotation matrix (SVD), so that inverses and relative poses are exact."""
    pose = np.array(pose, dtype=np.float64)
    u, _, vt = np.linalg.svd(pose[:, :3, :3])
    pose[:, :3, :3] = u @ vt
    return pose


def check_intrinsics(intrinsics: np.ndarray, num_frames: int, where: str) -> np.ndarray:
    """(4,) or (T, 4) normalised ``[fx/W, fy/H, cx/W, cy/H]`` → (T, 4) float64."""
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if intrinsics.shape == (4,):
        intrinsics = np.broadcast_to(intrinsics, (num_frames, 4)).copy()
    if intrinsics.shape != (num_frames, 4):
        raise ValueError(f"{where}: intrinsics must be (4,) or ({num_frames}, 4) normalised "
                         f"[fx/W, fy/H, cx/W, cy/H], got shape {intrinsics.shape}")
    if not np.isfinite(intrinsics).all() or (intrinsics[:, :2] <= 0).any():
        raise ValueError(f"{where}: intrinsics must be finite with fx, fy > 0, got {intrinsics[0].tolist()} (frame 0)")
    if (intrinsics[:, :2] > 50).any():
        raise ValueError(f"{where}: intrinsics look like pixels ({intrinsics[0].tolist()}); "
                         f"they must be normalised: [fx/W, fy/H, cx/W, cy/H]")
    return intrinsics


def crop_and_resize_intrinsics(intrinsics: np.ndarray, crop_box: tuple[int, int, int, int],
                               height: int, width: int) -> np.ndarray:
    """Normalised intrinsics after cropping the box ``(top, left, crop_h, crop_w)`` out of an
    ``height × width`` image. Resizing afterwards does not change normalised intrinsics."""
    top, left, crop_h, crop_w = crop_box
    k = np.array(intrinsics, dtype=np.float64)
    fx, fy, cx, cy = (k[..., i] for i in range(4))
    return np.stack([fx * width / crop_w, fy * height / crop_h,
                     (cx * width - left) / crop_w, (cy * height - top) / crop_h], axis=-1)


# ----------------------------------------------------------------------------------------------
# Frames


def centre_crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """The largest centred box of the target aspect ratio: ``(top, left, crop_h, crop_w)``."""
    if width * target_height > height * target_width:  # too wide: crop the sides
        crop_w = max(1, round(height * target_width / target_height))
        return 0, (width - crop_w) // 2, height, crop_w
    crop_h = max(1, round(width * target_height / target_width))
    return (height - crop_h) // 2, 0, crop_h, width


def resize_frames(frames: np.ndarray | torch.Tensor, height: int, width: int,
                  crop_box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, height, width, 3) uint8: optional crop, then antialiased bilinear resize."""
    frames = torch.as_tensor(np.asarray(frames))
    if crop_box is not None:
        top, left, crop_h, crop_w = crop_box
        frames = frames[:, top:top + crop_h, left:left + crop_w]
    if frames.shape[1:3] == (height, width):
        return frames.contiguous()
    x = frames.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _ffmpeg():
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary the FFMPEG plugin runs)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("reading and writing clips needs imageio and imageio-ffmpeg: "
                          "pip install imageio imageio-ffmpeg") from err
    return iio


def write_video(path: Path, frames: np.ndarray, fps: float, quality: int = 9, pixel_format: str = "yuv444p") -> None:
    """(T, H, W, 3) uint8 → H.264 mp4, written to a temporary file first and then moved into place.

    ``quality`` is imageio's 0..10 (libx264 CRF = 51·(1 − quality/10)). ``yuv444p`` keeps full
    colour resolution, which matters at 64×64 (``yuv420p`` plays everywhere but halves the colour
    resolution: see docs/data_format.md for the measured losses).
    """
    iio = _ffmpeg()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
    if pixel_format == "yuv420p" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        raise ValueError(f"{path}: yuv420p needs an even frame size, got {frames.shape[1]}x{frames.shape[2]}")
    if not 0 <= quality <= 10:
        raise ValueError(f"quality must be in 0..10, got {quality}")
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    iio.imwrite(tmp, frames, plugin="FFMPEG", fps=fps, codec="libx264", quality=quality, pixelformat=pixel_format,
                macro_block_size=1, ffmpeg_log_level="error")
    os.replace(tmp, path)


def iter_video(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video file, one (H, W, 3) uint8 array at a time."""
    iio = _ffmpeg()
    if not Path(path).is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        for frame in iio.imiter(path, plugin="FFMPEG"):
            yield np.asarray(frame)[..., :3]
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"cannot decode video {path} ({err})") from err


def read_video(path: Path, start: int = 0, num_frames: int | None = None) -> np.ndarray:
    """Frames ``start .. start + num_frames`` (all when None) of a video as (T, H, W, 3) uint8."""
    frames = []
    for index, frame in enumerate(iter_video(path)):
        if index >= start:
            frames.append(frame)
        if num_frames is not None and len(frames) == num_frames:
            break
    if num_frames is not None and len(frames) < num_frames:
        raise ValueError(f"video {path} has {start + len(frames)} frames, "
                         f"need frames {start}..{start + num_frames - 1}")
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def video_fps(path: Path) -> float:
    iio = _ffmpeg()
    try:
        fps = float(iio.immeta(path, plugin="FFMPEG").get("fps", float("nan")))
    except (OSError, RuntimeError) as err:
        raise ValueError(f"cannot read the metadata of video {path} ({err})") from err
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"video {path} does not state its frame rate; pass fps explicitly")
    return fps


# ----------------------------------------------------------------------------------------------
# Clips and the manifest


@dataclass
class ClipMeta:
    """One manifest entry."""

    id: str
    num_frames: int
    fps: float
    height: int
    width: int
    source: str
    prompt: str | None = None
    action_spec: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "ClipMeta":
        known = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) - known or {"id", "num_frames", "fps", "height", "width"} - set(data):
            raise ValueError(f"{where}: a clip entry needs keys id, num_frames, fps, height, width "
                             f"(optional: source, prompt, action_spec), got {data!r}")
        meta = cls(**{"source": "", **data})
        check_clip_id(meta.id, where)
        check_num_frames(meta.num_frames, f"{where}: clip {meta.id} num_frames")
        return meta


@dataclass
class ClipPoses:
    """The contents of ``clips/<id>.json``."""

    c2w: np.ndarray  # (T, 4, 4) OpenCV camera-to-world, relative to frame 0 (c2w[0] = I)
    intrinsics: np.ndarray  # (T, 4) normalised [fx/W, fy/H, cx/W, cy/H]
    actions: np.ndarray | None = None  # (num_latent_frames - 1, D): row k moves latent frame k to k + 1
    pose_string: str | None = None
    prompt: str | None = None

    @property
    def num_frames(self) -> int:
        return self.c2w.shape[0]

    def validate(self, where: str) -> "ClipPoses":
        self.c2w = check_rigid(self.c2w, where)
        num_frames = check_num_frames(self.c2w.shape[0], f"{where}: number of poses")
        if np.abs(self.c2w[0] - np.eye(4)).max() > 1e-6:
            raise ValueError(f"{where}: c2w must be relative to the first frame (c2w[0] = identity), "
                             f"got c2w[0] = {self.c2w[0].tolist()}")
        self.intrinsics = check_intrinsics(self.intrinsics, num_frames, where)
        if self.actions is not None:
            self.actions = np.asarray(self.actions, dtype=np.float64)
            num_latent = (num_frames - 1) // TEMPORAL_FACTOR + 1
            if self.actions.ndim != 2 or self.actions.shape[0] != num_latent - 1 or not np.isfinite(self.actions).all():
                raise ValueError(f"{where}: actions must be finite, shaped ({num_latent - 1}, D) "
                                 f"(one per latent frame after the first), got shape {self.actions.shape}")
        return self

    def to_dict(self, clip_id: str) -> dict:
        data: dict[str, Any] = {"id": clip_id, "num_frames": self.num_frames, "c2w": self.c2w.tolist(),
                                "intrinsics": self.intrinsics.tolist()}
        if self.actions is not None:
            data["actions"] = self.actions.tolist()
        if self.pose_string is not None:
            data["pose_string"] = self.pose_string
        if self.prompt is not None:
            data["prompt"] = self.prompt
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "ClipPoses":
        known = {"id", "num_frames", "c2w", "intrinsics", "actions", "pose_string", "prompt"}
        if not isinstance(data, dict) or set(data) - known or {"c2w", "intrinsics"} - set(data):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{where}: expected keys c2w, intrinsics (optional: {sorted(known - {'c2w', 'intrinsics'})}), "
                             f"got {keys}")
        try:
            c2w = np.asarray(data["c2w"], dtype=np.float64)
            intrinsics = np.asarray(data["intrinsics"], dtype=np.float64)
            actions = None if data.get("actions") is None else np.asarray(data["actions"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: c2w, intrinsics and actions must be numeric arrays ({err})") from err
        poses = cls(c2w, intrinsics, actions, data.get("pose_string"), data.get("prompt")).validate(where)
        if "num_frames" in data and data["num_frames"] != poses.num_frames:
            raise ValueError(f"{where}: num_frames is {data['num_frames']} but there are {poses.num_frames} poses")
        return poses


def video_path(root: Path, clip_id: str) -> Path:
    return Path(root) / CLIPS_DIR / f"{clip_id}.mp4"


def poses_path(root: Path, clip_id: str) -> Path:
    return Path(root) / CLIPS_DIR / f"{clip_id}.json"


def read_clip_poses(root: Path, clip_id: str) -> ClipPoses:
    path = poses_path(root, clip_id)
    return ClipPoses.from_dict(read_json(path), str(path))


@dataclass
class Manifest:
    clips: list[ClipMeta] = field(default_factory=list)
    origin: dict = field(default_factory=dict)  # the command and settings that made the dataset

    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "origin": self.origin,
                "clips": [clip.to_dict() for clip in self.clips]}


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {root} is not a minwm clip dataset "
                                f"(make one with `minwm-data render` or `minwm-data ingest`)")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} manifest (its 'format' is "
                         f"{data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {data.get('version')!r}; this minwm reads version {FORMAT_VERSION}")
    if not isinstance(data.get("clips"), list):
        raise ValueError(f"{path}: 'clips' must be a list")
    clips = [ClipMeta.from_dict(entry, f"{path} clip {i}") for i, entry in enumerate(data["clips"])]
    ids = [clip.id for clip in clips]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: clip id {duplicate!r} appears more than once")
    return Manifest(clips, data.get("origin", {}))


def dataset_action_spec(root: str | Path):
    """The :class:`~minwm_env.conditioning.ActionSpec` a dataset's actions are in, or None when
    no clip names one (then training derives camera deltas from the poses).

    Every clip that names a space must name the same one; it resolves to ``root/action_spec.json``
    when that file exists (and carries that name), else to a named space."""
    from ..conditioning import NAMED_ACTION_SPECS, ActionSpec, load_action_spec

    root = Path(root)
    names = sorted({clip.action_spec for clip in read_manifest(root).clips if clip.action_spec})
    if not names:
        return None
    if len(names) > 1:
        raise ValueError(f"{root}: the clips store actions in different spaces {names}; a dataset holds one")
    name, spec_file = names[0], root / SPEC_FILE
    if spec_file.is_file():
        spec = ActionSpec.from_file(spec_file)
        if spec.name != name:
            raise ValueError(f"{spec_file} describes the action space {spec.name!r}, but the clips of {root} "
                             f"name {name!r}")
        return spec
    if name in NAMED_ACTION_SPECS:
        return load_action_spec(name)
    raise ValueError(f"{root}: the clips name the action space {name!r}, which is neither a known name "
                     f"({sorted(NAMED_ACTION_SPECS)}) nor described by {spec_file}")


class DatasetWriter:
    """Adds clips to a dataset folder; resumable.

    Each clip's video and poses are written atomically, then the clip joins the manifest,
    which is rewritten atomically (at most every ``flush_s`` seconds, and on :meth:`close`).
    Re-opening a folder made with the same ``origin`` continues it (:meth:`has` tells which
    clips are done); a folder made by different settings is refused rather than mixed.
    """

    def __init__(self, root: str | Path, origin: dict, flush_s: float = 5.0):
        self.root = Path(root)
        self.origin = json.loads(json.dumps(origin))  # as it will read back from JSON
        self.flush_s = flush_s
        if (self.root / MANIFEST).is_file():
            self.manifest = read_manifest(self.root)
            if self.manifest.origin != self.origin:
                raise ValueError(f"{self.root} already holds a dataset made with other settings "
                                 f"({self.manifest.origin}); write to a new folder, or rerun with the same "
                                 f"settings to continue it")
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise ValueError(f"{self.root} exists, is not empty and has no {MANIFEST}; choose a new or empty folder")
            self.manifest = Manifest([], self.origin)
        (self.root / CLIPS_DIR).mkdir(parents=True, exist_ok=True)
        self._ids = {clip.id for clip in self.manifest.clips}
        self.flush()  # a folder interrupted before its first clip is still recognised, and continued

    def has(self, clip_id: str) -> bool:
        return clip_id in self._ids

    def add(self, clip_id: str, frames: np.ndarray, poses: ClipPoses, fps: float, source: str,
            action_spec: str | None = None, quality: int = 9, pixel_format: str = "yuv444p") -> ClipMeta:
        """Write one clip: frames (T, H, W, 3) uint8 with T = 1 + 4k, poses for the same T frames."""
        check_clip_id(clip_id)
        if clip_id in self._ids:
            raise ValueError(f"clip {clip_id!r} is already in {self.root / MANIFEST}")
        frames = np.asarray(frames)
        poses.validate(f"clip {clip_id}")
        if frames.ndim != 4 or frames.shape[0] != poses.num_frames:
            raise ValueError(f"clip {clip_id}: {frames.shape[0] if frames.ndim == 4 else frames.shape} frames "
                             f"but {poses.num_frames} poses")
        if not fps > 0:
            raise ValueError(f"clip {clip_id}: fps must be positive, got {fps}")
        write_video(video_path(self.root, clip_id), frames, fps, quality, pixel_format)
        atomic_write_json(poses_path(self.root, clip_id), poses.to_dict(clip_id), indent=None)
        meta = ClipMeta(clip_id, poses.num_frames, float(fps), frames.shape[1], frames.shape[2], source,
                        poses.prompt, action_spec)
        self.manifest.clips.append(meta)
        self._ids.add(clip_id)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()
        return meta

    def flush(self) -> None:
        self.manifest.clips.sort(key=lambda clip: clip.id)
        atomic_write_json(self.root / MANIFEST, self.manifest.to_dict())
        self._last_flush = time.monotonic()
        self._dirty = False

    def close(self) -> None:
        if self._dirty:
            self.flush()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def relative_c2w(world_c2w: np.ndarray) -> np.ndarray:
    """World c2w (T, 4, 4) → the same poses relative to the first frame."""
    return camera.relative_to_first(torch.as_tensor(world_c2w, dtype=torch.float64)).numpy()
