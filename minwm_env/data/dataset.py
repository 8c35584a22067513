"""Read a clip dataset as a ``torch.utils.data.Dataset``.

    from minwm_env.data import ClipDataset
    data = ClipDataset("data/world", num_frames=17, height=64, width=64)
    item = data[0]   # frames (17, 64, 64, 3) uint8, poses (17, 4, 4), intrinsics (17, 4), ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import camera
from .format import (TEMPORAL_FACTOR, ClipMeta, centre_crop_box, check_num_frames, crop_and_resize_intrinsics,
                     read_clip_poses, read_manifest, read_video, resize_frames, video_path)


class ClipDataset(torch.utils.data.Dataset):
    """Clips of a dataset folder (see :mod:`minwm_env.data`), one item per clip.

    Arguments:
        root: the dataset folder (with ``manifest.json``).
        num_frames: RGB frames per item, ``1 + 4k`` (default: each clip's full length).
        height, width: resize frames to this size (default: as stored). Normalised intrinsics
            do not change under a resize; with ``crop`` the frames are first centre-cropped to
            the output aspect ratio and the intrinsics follow the crop.
        float_frames: frames as float32 in [-1, 1] (the codec's range) instead of uint8.
        random_window: take a random window of ``num_frames`` starting at a latent-frame
            boundary (a multiple of 4, so actions stay aligned) instead of the first frames.

    An item is a dict: ``id`` (str), ``frames`` (T, H, W, 3), ``poses`` (T, 4, 4) float32 c2w
    relative to the item's first frame, ``intrinsics`` (T, 4) float32 normalised, ``fps``
    (float), ``prompt`` (str, "" when the clip has none) and, when the clip stores them,
    ``actions`` ((T - 1) / 4, D) float32.
    """

    def __init__(self, root: str | Path, num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, crop: bool = False, float_frames: bool = False,
                 random_window: bool = False):
        self.root = Path(root)
        self.clips: list[ClipMeta] = read_manifest(self.root).clips
        if num_frames is not None:
            check_num_frames(num_frames)
            short = [clip.id for clip in self.clips if clip.num_frames < num_frames]
            if short:
                raise ValueError(f"{self.root}: clips {short[:5]} have fewer than num_frames={num_frames} frames")
        if (height is None) != (width is None):
            raise ValueError(f"give both height and width or neither, got {height} and {width}")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.crop, self.float_frames, self.random_window = crop, float_frames, random_window

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        meta = self.clips[index]
        num_frames = self.num_frames or meta.num_frames
        start = 0
        if self.random_window:
            num_starts = (meta.num_frames - num_frames) // TEMPORAL_FACTOR + 1
            start = TEMPORAL_FACTOR * int(torch.randint(num_starts, ()).item())
        poses = read_clip_poses(self.root, meta.id)
        if poses.num_frames != meta.num_frames:
            raise ValueError(f"{self.root}: clip {meta.id} has {meta.num_frames} frames in the manifest but "
                             f"{poses.num_frames} poses in its pose file")
        path = video_path(self.root, meta.id)
        frames = read_video(path, start, num_frames)
        if frames.shape[1:3] != (meta.height, meta.width):
            raise ValueError(f"{path} is {frames.shape[1]}x{frames.shape[2]}, the manifest says "
                             f"{meta.height}x{meta.width}")
        window = slice(start, start + num_frames)
        c2w = camera.relative_to_first(torch.from_numpy(poses.c2w[window]))
        intrinsics = poses.intrinsics[window]
        if self.height is not None:
            crop_box = centre_crop_box(meta.height, meta.width, self.height, self.width) if self.crop else None
            frames = resize_frames(frames, self.height, self.width, crop_box)
            if crop_box is not None:
                intrinsics = crop_and_resize_intrinsics(intrinsics, crop_box, meta.height, meta.width)
        frames = torch.as_tensor(np.asarray(frames))
        item = {
            "id": meta.id,
            "frames": frames.float() / 127.5 - 1 if self.float_frames else frames,
            "poses": c2w.float(),
            "intrinsics": torch.as_tensor(intrinsics, dtype=torch.float32),
            "fps": meta.fps,
            "prompt": poses.prompt or "",
        }
        if poses.actions is not None:
            first = start // TEMPORAL_FACTOR
            item["actions"] = torch.as_tensor(poses.actions[first:first + (num_frames - 1) // TEMPORAL_FACTOR],
                                              dtype=torch.float32)
        return item
