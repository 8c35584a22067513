"""Training data: clip datasets on disk, rendered or ingested, and their pre-encoded latents.

    minwm-data render --out data/world --num-clips 1000 --num-frames 81
    minwm-data ingest --src my_videos --out data/mine --num-frames 81 --height 480 --width 832
    minwm-data encode --data data/world --model tiny

A clip dataset (format ``minwm-clips``, version 1; ``docs/data_format.md`` has the long form)::

    DIR/manifest.json        {"format": "minwm-clips", "version": 1, "origin": {...},
                              "clips": [{"id", "num_frames", "fps", "height", "width", "source",
                                         "prompt"?, "action_spec"?}, ...]}
    DIR/clips/<id>.mp4       H.264 video, T = 1 + 4k frames (yuv444p by default)
    DIR/clips/<id>.json      {"id", "num_frames",
                              "c2w": (T, 4, 4) OpenCV camera-to-world, relative to frame 0,
                              "intrinsics": (T, 4) normalised [fx/W, fy/H, cx/W, cy/H],
                              "actions"?: ((T - 1) / 4, D) per latent frame,
                              "pose_string"?: minWM pose string, "prompt"?: str}
    DIR/latents/             optional, made by `minwm-data encode` (see :mod:`.latents`)

Conventions are :mod:`minwm_env.camera`'s: latent frame k ↔ RGB frame 4k; action row k moves
the camera from latent frame k to latent frame k + 1; ``action_spec`` names the action space
(``"camera"``: :func:`minwm_env.conditioning.camera_action_spec`, deltas
``[dx, dy, dz, yaw, pitch, roll]``). ``origin`` records the command and settings that made the
folder, so a rerun with the same settings continues it and other settings are refused.

Modules: :mod:`.format` (the files, the writer), :mod:`.render` (the ground-truth world),
:mod:`.ingest` (your videos), :mod:`.dataset` (:class:`ClipDataset`), :mod:`.latents`
(:func:`encode_dataset`, :class:`LatentShardDataset`), :mod:`.cli` (``minwm-data``).
"""

from .dataset import ClipDataset
from .format import ClipMeta, ClipPoses, DatasetWriter, Manifest, read_clip_poses, read_manifest
from .ingest import IngestConfig, ingest_folder, read_pose_file
from .latents import EncodeConfig, LatentShardDataset, encode_dataset
from .render import RenderConfig, render_dataset

__all__ = ["ClipDataset", "ClipMeta", "ClipPoses", "DatasetWriter", "EncodeConfig", "IngestConfig",
           "LatentShardDataset", "Manifest", "RenderConfig", "encode_dataset", "ingest_folder", "read_clip_poses",
           "read_manifest", "read_pose_file", "render_dataset"]
