"""Turn a folder of your own videos with per-frame camera poses into a minwm clip dataset.

    minwm-data ingest --src my_videos/ --out data/mine --num-frames 81 --height 480 --width 832

``src`` holds videos (``.mp4 .mov .mkv .avi .webm``) and, beside each, one pose file with the
same stem: ``walk1.mp4`` + ``walk1.txt`` / ``walk1.json`` / ``walk1.npz``. Every video frame
needs exactly one pose; a video without a pose file, a pose file without a video, two pose
files for one video, unreadable or malformed pose files and frame counts that do not match
all raise an error naming the file.

Pose files
----------
``.txt`` (RealEstate10K): the first line is the video's URL; then one line per frame::

    timestamp fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3

with intrinsics already normalised (``fx/W, fy/H, cx/W, cy/H``), two zero distortion terms and
the 3×4 world-to-camera matrix row by row (OpenCV axes). Timestamps must increase.

Rotations must be orthonormal within 1e-3 (else the file is refused as malformed); they are
then snapped to the nearest rotation, so relative poses are exact despite rounded text.

``.json`` (an object) or ``.npz`` (arrays), with exactly one of

* ``c2w``: (T, 4, 4) or (T, 3, 4) camera-to-world, OpenCV axes;
* ``w2c``: (T, 4, 4) or (T, 3, 4) world-to-camera, OpenCV axes;
* ``poses``: (T, 7) world-to-camera as ``[tx, ty, tz, qx, qy, qz, qw]`` (minWM's layout),

plus ``intrinsics``: (4,) or (T, 4) normalised ``[fx/W, fy/H, cx/W, cy/H]``, and optionally
``prompt`` (a string), ``actions`` ((N, D), row k is the action from latent frame k to k + 1,
RGB frame 4k to 4k + 4; needs ``frame_stride`` 1) and ``action_spec`` (its name). Other keys
are refused.

Each clip keeps every ``frame_stride``-th frame, is cut to ``num_frames`` (default: the longest
1 + 4k), optionally centre-cropped to the output aspect ratio and resized; the stored poses
are re-expressed relative to the clip's first frame and the intrinsics follow the crop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import camera
from ..cli import arg
from ..conditioning import NAMED_ACTION_SPECS, load_action_spec
from .format import (PIXEL_FORMATS, SPEC_FILE, TEMPORAL_FACTOR, ClipPoses, DatasetWriter, centre_crop_box, check_clip_id,
                     check_intrinsics, check_num_frames, check_rigid, crop_and_resize_intrinsics, iter_video,
                     longest_valid_length, orthonormalize, relative_c2w, resize_frames, video_fps)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
POSE_SUFFIXES = (".txt", ".json", ".npz")
POSE_KEYS = ("c2w", "w2c", "poses")
OPTIONAL_KEYS = ("intrinsics", "prompt", "actions", "action_spec")


@dataclass
class IngestConfig:
    """Ingest a folder of videos with per-frame camera poses."""

    num_frames: int | None = arg(None, "frames per clip, 1 + 4k; None: the longest 1 + 4k each video allows")
    frame_stride: int = arg(1, "keep every n-th frame (and pose) of the source video")
    height: int | None = arg(None, "output height in pixels; None: the source height")
    width: int | None = arg(None, "output width in pixels; None: the source width")
    crop: bool = arg(False, "centre-crop to the output aspect ratio before resizing (else stretch)")
    fps: float | None = arg(None, "frame rate of the source videos; None: read from each video")
    quality: int = arg(9, "H.264 quality 0..10 (libx264 CRF = 51 * (1 - quality / 10))")
    pixel_format: str = arg("yuv444p", "video pixel format (yuv420p plays everywhere but blurs colour)",
                            choices=PIXEL_FORMATS)
    action_spec: str | None = arg(None, "the space of the pose files' actions: a name (camera, pusher-arm, ...) or "
                                        "a spec file (JSON, copied into the dataset); every action is checked "
                                        "against it")

    def __post_init__(self):
        if self.num_frames is not None:
            check_num_frames(self.num_frames)
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if (self.height is None) != (self.width is None):
            raise ValueError(f"give both height and width or neither, got {self.height} and {self.width}")
        if self.height is not None and (self.height < 1 or self.width < 1):
            raise ValueError(f"height and width must be positive, got {self.height}x{self.width}")


@dataclass
class PoseTrack:
    """A pose file's contents: per-frame world poses and the extras."""

    c2w: np.ndarray  # (T, 4, 4) camera-to-world in the file's world frame
    intrinsics: np.ndarray  # (T, 4) normalised
    prompt: str | None = None
    actions: np.ndarray | None = None
    action_spec: str | None = None


def _as_4x4(matrices: np.ndarray, where: str, key: str) -> np.ndarray:
    if matrices.ndim != 3 or matrices.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{where}: {key} must be (T, 4, 4) or (T, 3, 4), got shape {matrices.shape}")
    if matrices.shape[1] == 3:
        bottom = np.broadcast_to(np.array([0, 0, 0, 1.0]), (matrices.shape[0], 1, 4))
        matrices = np.concatenate([matrices, bottom], axis=1)
    return matrices


def read_realestate_txt(path: Path) -> PoseTrack:
    where = str(path)
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: cannot read the pose file ({err})") from err
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{where}: empty pose file; expected a URL line, then one pose line per frame")
    if _numbers(lines[0]) is not None:
        raise ValueError(f"{where}: the first line must be the video's URL (RealEstate10K layout), "
                         f"got a line of numbers")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        values = _numbers(line)
        if values is None or len(values) != 19:
            count = "non-numeric values" if values is None else f"{len(values)} values"
            raise ValueError(f"{where} line {number}: expected 19 numbers (timestamp fx fy cx cy 0 0 and a 3x4 "
                             f"world-to-camera matrix row by row), got {count}")
        rows.append(values)
    if not rows:
        raise ValueError(f"{where}: no pose lines after the URL line")
    table = np.array(rows, dtype=np.float64)
    if not np.isfinite(table).all():
        line = int(np.argwhere(~np.isfinite(table).all(axis=1))[0, 0]) + 2
        raise ValueError(f"{where} line {line}: NaN or inf")
    if (np.diff(table[:, 0]) <= 0).any():
        line = int(np.argwhere(np.diff(table[:, 0]) <= 0)[0, 0]) + 3
        raise ValueError(f"{where} line {line}: timestamps must increase")
    if np.abs(table[:, 5:7]).max() > 0:
        line = int(np.argwhere(np.abs(table[:, 5:7]).max(axis=1) > 0)[0, 0]) + 2
        raise ValueError(f"{where} line {line}: non-zero lens distortion; only undistorted frames are supported")
    w2c = orthonormalize(check_rigid(_as_4x4(table[:, 7:].reshape(-1, 3, 4), where, "w2c"), where))
    return PoseTrack(_invert(w2c), check_intrinsics(table[:, 1:5], len(table), where))


def _numbers(line: str) -> list[float] | None:
    try:
        return [float(v) for v in line.split()]
    except ValueError:
        return None


def _invert(pose: np.ndarray) -> np.ndarray:
    return camera.invert_pose(torch.as_tensor(pose, dtype=torch.float64)).numpy()


def read_pose_arrays(data: dict, where: str) -> PoseTrack:
    """The keys of a JSON object or an NPZ archive → a :class:`PoseTrack`."""
    unknown = set(data) - set(POSE_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected one of {list(POSE_KEYS)} plus "
                         f"{list(OPTIONAL_KEYS)}")
    present = [key for key in POSE_KEYS if key in data]
    if len(present) != 1:
        raise ValueError(f"{where}: needs exactly one of {list(POSE_KEYS)}, found {present or 'none'}")
    if "intrinsics" not in data:
        raise ValueError(f"{where}: missing 'intrinsics' ((4,) or (T, 4) normalised [fx/W, fy/H, cx/W, cy/H])")
    key = present[0]
    try:
        values = np.asarray(data[key], dtype=np.float64)
        intrinsics = np.asarray(data["intrinsics"], dtype=np.float64)
        actions = None if data.get("actions") is None else np.asarray(data["actions"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {key}, intrinsics and actions must be numeric arrays ({err})") from err
    if key == "poses":
        if values.ndim != 2 or values.shape[1] != 7:
            raise ValueError(f"{where}: poses must be (T, 7) world-to-camera [tx, ty, tz, qx, qy, qz, qw], "
                             f"got shape {values.shape}")
        try:
            w2c = camera.w2c_from_vector(torch.as_tensor(values)).numpy()
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        c2w = _invert(w2c)
    else:
        matrices = orthonormalize(check_rigid(_as_4x4(values, where, key), where))
        c2w = matrices if key == "c2w" else _invert(matrices)
    prompt = data.get("prompt")
    if isinstance(prompt, np.ndarray) and prompt.ndim == 0:
        prompt = str(prompt)
    spec = data.get("action_spec")
    if isinstance(spec, np.ndarray) and spec.ndim == 0:
        spec = str(spec)
    for name, value in (("prompt", prompt), ("action_spec", spec)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {name} must be a string, got {type(value).__name__}")
    if actions is not None and (actions.ndim != 2 or not np.isfinite(actions).all()):
        raise ValueError(f"{where}: actions must be a finite (N, D) array, got shape {actions.shape}")
    return PoseTrack(c2w, check_intrinsics(intrinsics, len(c2w), where), prompt, actions, spec)


def read_pose_file(path: str | Path) -> PoseTrack:
    """Read a ``.txt`` (RealEstate10K), ``.json`` or ``.npz`` pose file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pose file {path} does not exist")
    if path.suffix == ".txt":
        return read_realestate_txt(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with keys {list(POSE_KEYS)} / {list(OPTIONAL_KEYS)}")
        return read_pose_arrays(data, str(path))
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                data = {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable npz archive ({err})") from err
        return read_pose_arrays(data, str(path))
    raise ValueError(f"{path}: pose files end in {POSE_SUFFIXES}")


def pair_videos_and_poses(src: Path) -> list[tuple[Path, Path]]:
    """(video, pose file) pairs of a folder, sorted by name; loud about anything unpaired."""
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    files = sorted(p for p in src.iterdir() if p.is_file())
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    pose_files: dict[str, list[Path]] = {}
    for p in files:
        if p.suffix in POSE_SUFFIXES:
            pose_files.setdefault(p.stem, []).append(p)
    if not videos:
        raise ValueError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {src}")
    stems = [v.stem for v in videos]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise ValueError(f"{src}: several videos are named {duplicate!r}.*; clip ids come from file names")
    pairs = []
    for video in videos:
        candidates = pose_files.get(video.stem, [])
        if not candidates:
            raise FileNotFoundError(f"video {video} has no pose file: expected {video.stem}.txt, "
                                    f"{video.stem}.json or {video.stem}.npz beside it")
        if len(candidates) > 1:
            raise ValueError(f"video {video} has several pose files {[c.name for c in candidates]}; keep one")
        check_clip_id(video.stem, str(video))
        pairs.append((video, candidates[0]))
    orphans = sorted(str(p) for stem, ps in pose_files.items() if stem not in stems for p in ps)
    if orphans:
        raise ValueError(f"pose files without a video of the same name: {orphans}")
    return pairs


def load_video_clip(video: Path, track: PoseTrack, pose_file: Path, config: IngestConfig
                    ) -> tuple[np.ndarray, ClipPoses, float]:
    """One source video and its poses → output frames, poses relative to the first frame, fps."""
    num_poses = len(track.c2w)
    out_size = None if config.height is None else (config.height, config.width)
    source_size = crop_box = None
    kept: list[torch.Tensor] = []
    num_video_frames = 0
    wanted = None if config.num_frames is None else (config.num_frames - 1) * config.frame_stride + 1
    for index, frame in enumerate(iter_video(video)):
        num_video_frames += 1
        if index % config.frame_stride or (wanted is not None and index >= wanted):
            continue
        if source_size is None:
            source_size = frame.shape[:2]
            if out_size is not None and config.crop:
                crop_box = centre_crop_box(*source_size, *out_size)
        kept.append(resize_frames(frame[None], *(out_size or source_size), crop_box=crop_box)[0])
    if num_video_frames != num_poses:
        raise ValueError(f"video {video} has {num_video_frames} frames but {pose_file} has {num_poses} poses; "
                         f"every frame needs exactly one pose")
    num_frames = config.num_frames if config.num_frames is not None else longest_valid_length(len(kept))
    if num_frames < 1 + TEMPORAL_FACTOR or len(kept) < num_frames:
        need = max(num_frames, 1 + TEMPORAL_FACTOR)
        raise ValueError(f"video {video} is too short: {num_video_frames} frames give {len(kept)} at stride "
                         f"{config.frame_stride}, need {need} (clips have 1 + {TEMPORAL_FACTOR}k frames, k >= 1)")
    frames = torch.stack(kept[:num_frames]).numpy()
    indices = np.arange(num_frames) * config.frame_stride
    intrinsics = track.intrinsics[indices]
    if crop_box is not None:
        intrinsics = crop_and_resize_intrinsics(intrinsics, crop_box, *source_size)
    actions = None
    if track.actions is not None:
        num_actions = (num_frames - 1) // TEMPORAL_FACTOR
        if config.frame_stride != 1:
            raise ValueError(f"{pose_file}: actions are per latent frame of the source video; "
                             f"they cannot be kept with frame_stride {config.frame_stride}")
        if len(track.actions) < num_actions:
            raise ValueError(f"{pose_file}: {len(track.actions)} actions, but a clip of {num_frames} frames "
                             f"needs {num_actions} (one per latent frame after the first)")
        actions = track.actions[:num_actions]
    poses = ClipPoses(relative_c2w(track.c2w[indices]), intrinsics, actions, None, track.prompt)
    fps = (config.fps or video_fps(video)) / config.frame_stride
    return frames, poses.validate(str(pose_file)), fps


def _check_actions(track: PoseTrack, spec, pose_file: Path) -> PoseTrack:
    """The track with its actions checked against ``spec`` and its space named after it."""
    if track.actions is None:
        raise ValueError(f"{pose_file} has no actions, but --action-spec {spec.name} says the clips have them")
    if track.action_spec is not None and track.action_spec != spec.name:
        raise ValueError(f"{pose_file} names the action space {track.action_spec!r}, but --action-spec is "
                         f"{spec.describe()}")
    try:
        spec.validate(torch.as_tensor(track.actions))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{pose_file}: its actions do not fit --action-spec {spec.describe()}: {err}") from err
    return replace(track, action_spec=spec.name)


def ingest_folder(src: str | Path, out: str | Path, config: IngestConfig, progress: bool = True) -> Path:
    """Ingest every video of ``src`` into the dataset ``out`` (continuing one made from the same
    folder with the same settings). Pairing and pose files are checked before anything is written;
    frame counts are checked as each video is decoded."""
    src = Path(src)
    pairs = pair_videos_and_poses(src)
    origin = {"command": "ingest", "src": str(src.resolve()), "config": asdict(config)}
    tracks = [read_pose_file(pose_file) for _, pose_file in pairs]  # malformed files fail before any writing
    spec = load_action_spec(config.action_spec) if config.action_spec else None
    if spec is not None:
        tracks = [_check_actions(track, spec, pose_file) for track, (_, pose_file) in zip(tracks, pairs)]
    with DatasetWriter(out, origin) as writer:
        if spec is not None and spec.name not in NAMED_ACTION_SPECS:
            spec.save(Path(out) / SPEC_FILE)
        todo = [(video, track, pose_file) for (video, pose_file), track in zip(pairs, tracks)
                if not writer.has(video.stem)]
        for video, track, pose_file in tqdm(todo, desc="ingest", unit="clip", disable=not progress):
            frames, poses, fps = load_video_clip(video, track, pose_file, config)
            writer.add(video.stem, frames, poses, fps, f"ingest {video.name}", track.action_spec,
                       config.quality, config.pixel_format)
    return Path(out)
