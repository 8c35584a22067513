"""Plausibility of frames: a Fréchet distance in the feature space of a small encoder of our world.

    python -m minwm_env.eval.features train --out runs/eval-encoder     # ~16 min on 2 CPU cores

    from minwm_env.eval.features import frame_distance
    fd = frame_distance(model_frames, truth_frames)      # (N, 64, 64, 3) uint8 each, N > 64

Why: PSNR compares a frame with the one true frame, which is meaningless for content the model
could never have seen (what comes into view on a 120° turn): there a blur wins PSNR. The
question for new content is whether the frames look like frames of this world. FID's answer
(Heusel et al. 2017, "GANs trained by a two time-scale update rule", eq. 6) is the Fréchet
distance between Gaussians fitted to features of the two sets of frames. An ImageNet network
knows nothing of 64×64 MuJoCo rooms, so our features come from a small CNN trained here on
ground-truth renders alone, supervised by the renderer's own labels: per-pixel segmentation into
:data:`~minwm_env.world.renderer.LABELS`, which labels appear in the frame, and the scene kind.
Training never sees a degraded frame, so blurred or blocky frames land off the truth's feature
distribution, and a set that repeats a frame collapses its covariance.

The trained encoder ships with the package (``minwm_env/assets/eval-encoder-v1/``: safetensors,
``encoder.json`` with its architecture, training settings and held-out accuracy, and the sha256
manifest checked on every load), so scores stay comparable across releases: a new encoder gets
a new version string, and every score should be reported with :attr:`FrameEncoder.version`.

Features are the global average of the last convolution, centred and divided by one scale so
that the truth's features have mean 0 and mean per-dimension variance 1 (the training frames'
statistics): an FD is in units of the truth's own feature variance. The FD of two finite samples
of the *same* distribution is not 0 but a floor that shrinks as the samples grow (the docstring
of :func:`frechet_distance`); compare a model's FD with the truth-vs-truth floor at the same N.
Measured with eval-encoder-v1 (held-out layouts 100-109 vs 110-119, 5 draws each):

    N frames          64 (shrinkage 0.1)  128        256        512        1024
    truth vs truth    7.3 ± 1.4           3.8 ± 0.5  2.0 ± 0.2  1.2 ± 0.2  0.6 ± 0.1
    blur sigma 1.5    25.9                26.3       23.4       22.4       22.3
    4x4 blocks        35.9                36.7       33.3       32.6       33.0
    noise sigma 4     10.9                8.6        7.1        6.7        5.8
    one frame, N x    114                 112        150        151        109
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import camera
from ..cli import add_dataclass_arguments, arg
from ..data.render import RenderConfig
from ..integrity import check_files, check_finite, write_manifest
from ..jsonfile import read_json
from ..world.renderer import LABELS, WorldRenderer, look_pose
from ..world.scenes import SCENE_NAMES, Scene, make_scene

ENCODER_VERSION = "eval-encoder-v1"
SHIPPED_ENCODER = Path(__file__).resolve().parents[1] / "assets" / ENCODER_VERSION
WEIGHTS_FILE = "encoder.safetensors"
CONFIG_FILE = "encoder.json"
# Layouts 0..TRAINING_LAYOUTS-1 are the world model's training layouts (minwm-data render); the
# encoder trains on them too and is scored on layouts from TRAINING_LAYOUTS on, as models are.
TRAINING_LAYOUTS = RenderConfig.num_scene_seeds


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder's architecture; saved as ``architecture`` in ``encoder.json``."""

    image_size: int = 64
    """height and width of the frames, in pixels"""
    channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    """output channels of each 3×3 convolution (conv, batch norm, ReLU)"""
    strides: tuple[int, ...] = (2, 2, 1, 2, 1)
    """stride of each convolution"""
    skip_block: int = 2
    """index of the block whose (finer) output the segmentation head reads besides the last block's"""
    num_labels: int = len(LABELS)
    """segmentation and presence classes (the renderer's LABELS)"""
    num_scene_kinds: int = len(SCENE_NAMES)
    """scene kinds (SCENE_NAMES)"""

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]

    @classmethod
    def from_dict(cls, data: dict, source: str) -> "EncoderConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{source}: unknown architecture keys {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        config = cls(**data)
        if len(config.channels) != len(config.strides) or not 0 <= config.skip_block < len(config.channels) - 1:
            raise ValueError(f"{source}: channels {config.channels} and strides {config.strides} must have the same "
                             f"length and skip_block ({config.skip_block}) must name a block before the last")
        return config


@dataclass
class EncoderOutput:
    """What one forward pass gives; the heads are used in training only."""

    features: torch.Tensor  # (B, D) normalised pooled features
    segmentation: torch.Tensor  # (B, num_labels, H, W) logits
    presence: torch.Tensor  # (B, num_labels) logits: does the frame show this label
    scene_kind: torch.Tensor  # (B, num_scene_kinds) logits


class FrameEncoder(nn.Module):
    """A small CNN from 64×64 RGB frames to a ``feature_dim`` vector (:func:`features`), with the
    training heads: segmentation (from the last two resolutions, upsampled bilinearly), label
    presence and scene kind (linear, on the pooled features)."""

    def __init__(self, config: EncoderConfig, version: str = ENCODER_VERSION):
        super().__init__()
        self.config, self.version = config, version
        blocks, in_channels = [], 3
        for out_channels, stride in zip(config.channels, config.strides):
            blocks.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                                        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.segment_fine = nn.Conv2d(config.channels[config.skip_block], config.num_labels, 1)
        self.segment_coarse = nn.Conv2d(config.feature_dim, config.num_labels, 1)
        self.presence = nn.Linear(config.feature_dim, config.num_labels)
        self.scene_kind = nn.Linear(config.feature_dim, config.num_scene_kinds)
        # The truth's feature statistics (set after training): features are (pooled - mean) / scale.
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

    def _trunk(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, height, width, channels = frames.shape
        size = self.config.image_size
        if frames.dtype != torch.uint8 or (height, width, channels) != (size, size, 3):
            raise ValueError(f"the encoder takes uint8 frames (N, {size}, {size}, 3), got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        hidden = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        fine = None
        for index, block in enumerate(self.blocks):
            hidden = block(hidden)
            if index == self.config.skip_block:
                fine = hidden  # (B, C_skip, H/4, W/4) with the default strides
        return fine, hidden  # hidden: (B, D, H/8, W/8)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, D) normalised features."""
        return self._normalise(self.pooled(frames))

    def pooled(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 → (B, D) features before normalisation (to fit the normalisation)."""
        return self._trunk(frames)[1].mean(dim=(2, 3))

    def _normalise(self, pooled: torch.Tensor) -> torch.Tensor:
        return (pooled - self.feature_mean) / self.feature_scale

    def forward(self, frames: torch.Tensor) -> EncoderOutput:
        fine, hidden = self._trunk(frames)
        pooled = hidden.mean(dim=(2, 3))  # (B, D)
        coarse = F.interpolate(self.segment_coarse(hidden), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        segmentation = F.interpolate(self.segment_fine(fine) + coarse, size=frames.shape[1:3], mode="bilinear",
                                     align_corners=False)
        return EncoderOutput(self._normalise(pooled), segmentation, self.presence(pooled), self.scene_kind(pooled))


# -- the frames it learns from ------------------------------------------------------------------

@dataclass
class Views:
    """Rendered views of the ground-truth world: frames and the renderer's labels of them."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray | None  # (N, H, W) uint8 LABELS index per pixel (None when not rendered)
    scene_kinds: np.ndarray  # (N,) int64 index into SCENE_NAMES
    scene_seeds: np.ndarray  # (N,) int64 layout seed


def random_view(scene: Scene, rng: random.Random, margin: float = 0.25) -> np.ndarray:
    """An OpenCV c2w anywhere the env's camera can be: a free position (``margin`` from walls and
    objects; the env blocks moves closer than 0.2), height around the env's start height
    (``scene.camera_height``; actions move it up and down), any heading, pitch within ±35° (the
    paths' look-arounds reach ±30°) and a little roll."""
    for _ in range(1000):
        x = rng.uniform(-scene.half_extent, scene.half_extent)
        y = rng.uniform(-scene.half_extent, scene.half_extent)
        if scene.clearance(x, y) >= margin:
            break
    else:
        raise RuntimeError(f"no free position with clearance {margin} in scene {scene.name}/{scene.seed}")
    z = min(max(rng.gauss(scene.camera_height, 0.2), 0.15), scene.wall_height - 0.15)
    pose = look_pose(x, y, z, rng.uniform(0.0, 360.0), rng.uniform(-35.0, 35.0))
    roll = camera.delta_to_matrix(torch.tensor([0, 0, 0, 0, 0, rng.uniform(-8.0, 8.0)], dtype=torch.float64))
    return pose @ roll.numpy()


def render_views(layouts: Sequence[tuple[str, int]], num_frames: int, seed: int, *, with_labels: bool = False,
                 image_size: int = 64, progress: bool = False) -> Views:
    """``num_frames`` random views (:func:`random_view`) spread evenly over ``layouts`` (scene
    name, layout seed). A layout's k-th view depends only on (seed, name, layout seed, k)."""
    if num_frames < 1 or not layouts:
        raise ValueError(f"need at least one frame and one layout, got {num_frames} frames, {len(layouts)} layouts")
    frames, labels, kinds, seeds = [], [], [], []
    for index, (name, scene_seed) in enumerate(tqdm(layouts, desc="render", disable=not progress, mininterval=5)):
        count = num_frames // len(layouts) + (index < num_frames % len(layouts))
        if count == 0:
            continue
        scene = make_scene(name, scene_seed)
        rng = random.Random(f"eval-encoder-views-{seed}-{name}-{scene_seed}")
        renderer = WorldRenderer(scene, image_size, image_size)
        try:
            for _ in range(count):
                pose = random_view(scene, rng)
                frames.append(renderer.render(pose))
                if with_labels:
                    labels.append(renderer.render_labels(pose)[0].astype(np.uint8))
        finally:
            renderer.close()
        kinds += [SCENE_NAMES.index(name)] * count
        seeds += [scene_seed] * count
    return Views(np.stack(frames), np.stack(labels) if with_labels else None, np.array(kinds, dtype=np.int64),
                 np.array(seeds, dtype=np.int64))


def all_kinds(layout_seeds: Sequence[int]) -> list[tuple[str, int]]:
    """Every scene kind at each of ``layout_seeds``."""
    return [(name, s) for s in layout_seeds for name in SCENE_NAMES]


def presence_targets(labels: np.ndarray, num_labels: int, min_pixels: int) -> np.ndarray:
    """(N, H, W) labels → (N, num_labels) float32: 1 where a label covers at least ``min_pixels``."""
    counts = np.stack([(labels == k).sum(axis=(1, 2)) for k in range(num_labels)], axis=1)
    return (counts >= min_pixels).astype(np.float32)


# -- training -----------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Train the evaluation encoder on ground-truth renders of the training layouts."""

    out: str = arg("", "output folder (weights, encoder.json, manifest)")
    num_frames: int = arg(24000, "training frames, spread over every scene kind's training layouts")
    num_layouts: int = arg(TRAINING_LAYOUTS, f"training layout seeds 0..N-1 of each scene kind (at most "
                                             f"{TRAINING_LAYOUTS}: higher ones are held out)")
    steps: int = arg(4000, "optimiser steps")
    batch_size: int = arg(128, "frames per step")
    lr: float = arg(3e-3, "peak AdamW learning rate (linear warm-up, cosine decay)")
    weight_decay: float = arg(1e-4, "AdamW weight decay")
    warmup_steps: int = arg(100, "learning-rate warm-up steps")
    presence_min_pixels: int = arg(8, "a label is present in a frame when it covers at least this many pixels")
    num_eval_layouts: int = arg(25, f"held-out layout seeds {TRAINING_LAYOUTS}.. of each kind scored after training")
    eval_frames_per_layout: int = arg(8, "views per held-out layout")
    seed: int = arg(0, "seed of the views, the initial weights and the batches")
    num_threads: int | None = arg(None, "torch threads (default: torch's)")

    def __post_init__(self):
        if not self.out:
            raise ValueError("--out is required: the folder to write the encoder to")
        if not 1 <= self.num_layouts <= TRAINING_LAYOUTS:
            raise ValueError(f"num_layouts must be in 1..{TRAINING_LAYOUTS} (layouts {TRAINING_LAYOUTS}+ are held "
                             f"out), got {self.num_layouts}")
        for name in ("num_frames", "steps", "batch_size", "num_eval_layouts", "eval_frames_per_layout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class HeadScores:
    """How well the training heads read held-out frames (what the features know)."""

    pixel_accuracy: float
    mean_iou: float
    """mean over the labels that occur in the frames or the predictions"""
    iou: dict[str, float]
    presence_accuracy: float
    """over every (frame, label) pair"""
    scene_kind_accuracy: float
    num_frames: int


@torch.no_grad()
def score_heads(encoder: FrameEncoder, views: Views, min_pixels: int, batch_size: int = 256) -> HeadScores:
    if views.labels is None:
        raise ValueError("scoring the heads needs views rendered with labels")
    num_labels = encoder.config.num_labels
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)
    presence_hits = scene_hits = 0
    targets = torch.from_numpy(presence_targets(views.labels, num_labels, min_pixels))
    for start in range(0, len(views.frames), batch_size):
        part = slice(start, start + batch_size)
        output = encoder(torch.from_numpy(views.frames[part]))
        truth = torch.from_numpy(views.labels[part]).long()
        predicted = output.segmentation.argmax(dim=1)
        confusion += torch.bincount(truth.flatten() * num_labels + predicted.flatten(),
                                    minlength=num_labels ** 2).reshape(num_labels, num_labels)
        presence_hits += int(((output.presence > 0).float() == targets[part]).sum())
        scene_hits += int((output.scene_kind.argmax(dim=1) == torch.from_numpy(views.scene_kinds[part])).sum())
    intersection = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - intersection
    iou = {LABELS[k]: float(intersection[k] / union[k]) for k in range(num_labels) if union[k] > 0}
    num = len(views.frames)
    return HeadScores(pixel_accuracy=float(intersection.sum() / confusion.sum()),
                      mean_iou=float(np.mean(list(iou.values()))), iou=iou,
                      presence_accuracy=presence_hits / (num * num_labels), scene_kind_accuracy=scene_hits / num,
                      num_frames=num)


def _learning_rate(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak rate: linear warm-up, then cosine decay to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _batch(views: Views, presence: np.ndarray, generator: torch.Generator, batch_size: int):
    """A random batch, each frame mirrored left-right with probability ½ (a mirrored room is a
    room; its labels mirror with it). No other augmentation: the features must notice blur."""
    index = torch.randint(len(views.frames), (batch_size,), generator=generator).numpy()
    flip = torch.rand(batch_size, generator=generator).numpy() < 0.5
    frames, labels = views.frames[index].copy(), views.labels[index].copy()
    frames[flip], labels[flip] = frames[flip, :, ::-1], labels[flip, :, ::-1]
    return (torch.from_numpy(frames), torch.from_numpy(labels).long(), torch.from_numpy(presence[index]),
            torch.from_numpy(views.scene_kinds[index]))


def train_encoder(config: TrainConfig, progress: bool = True) -> dict:
    """Render, train, fit the feature normalisation, score on held-out layouts, write the folder
    (:func:`save_encoder`); returns what ``encoder.json`` records besides the architecture.
    Deterministic given the seed (on one machine, with one thread count)."""
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(config, progress)
    finally:
        torch.set_num_threads(threads)


def _train(config: TrainConfig, progress: bool) -> dict:
    began = time.perf_counter()
    encoder_config = EncoderConfig()
    views = render_views(all_kinds(range(config.num_layouts)), config.num_frames, config.seed, with_labels=True,
                         image_size=encoder_config.image_size, progress=progress)
    held_out = render_views(all_kinds(range(TRAINING_LAYOUTS, TRAINING_LAYOUTS + config.num_eval_layouts)),
                            config.num_eval_layouts * len(SCENE_NAMES) * config.eval_frames_per_layout, config.seed,
                            with_labels=True, image_size=encoder_config.image_size, progress=progress)
    render_s = time.perf_counter() - began
    presence = presence_targets(views.labels, encoder_config.num_labels, config.presence_min_pixels)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = FrameEncoder(encoder_config)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate(step, config))
    encoder.train()
    bar = tqdm(range(config.steps), desc="train", disable=not progress, mininterval=5)
    logs = {}
    for _ in bar:
        frames, labels, present, kinds = _batch(views, presence, generator, config.batch_size)
        output = encoder(frames)
        logs = {"loss/segmentation": F.cross_entropy(output.segmentation, labels),
                "loss/presence": F.binary_cross_entropy_with_logits(output.presence, present),
                "loss/scene_kind": F.cross_entropy(output.scene_kind, kinds)}
        loss = sum(logs.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {schedule.last_epoch}: "
                                     f"{ {k: float(v) for k, v in logs.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix({k.split("/")[1]: f"{v.item():.3f}" for k, v in logs.items()}, refresh=False)
    train_s = time.perf_counter() - began - render_s

    encoder.eval()
    with torch.no_grad():  # the truth's statistics: features of the training frames have mean 0, variance 1
        pooled = torch.cat([encoder.pooled(torch.from_numpy(views.frames[i:i + 512]))
                            for i in range(0, len(views.frames), 512)]).double()
        encoder.feature_mean.copy_(pooled.mean(0).float())
        encoder.feature_scale.copy_(pooled.var(0).mean().sqrt().float())
    scores = score_heads(encoder, held_out, config.presence_min_pixels)
    training = {k: v for k, v in asdict(config).items() if k != "out"}
    record = {
        "training": {**training, "num_threads_used": torch.get_num_threads(),
                     "training_layouts": f"0..{config.num_layouts - 1} of each of {list(SCENE_NAMES)}",
                     "final_losses": {k: round(v.item(), 4) for k, v in logs.items()},
                     "render_s": round(render_s, 1), "train_s": round(train_s, 1)},
        "held_out": {**asdict(scores),
                     "layouts": f"{TRAINING_LAYOUTS}..{TRAINING_LAYOUTS + config.num_eval_layouts - 1} of each scene "
                                f"kind, {config.eval_frames_per_layout} views each"},
    }
    save_encoder(encoder, config.out, record)
    return record


def save_encoder(encoder: FrameEncoder, folder: str | Path, record: dict) -> Path:
    """Write ``encoder.safetensors``, its sha256 manifest and ``encoder.json`` (version,
    architecture, labels, scene kinds, feature normalisation, and ``record``: training settings
    and held-out scores). NaN/inf weights are refused before anything is written."""
    folder = Path(folder)
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    check_finite(state, f"the encoder to be saved to {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, folder / WEIGHTS_FILE)
    write_manifest(folder, [WEIGHTS_FILE])
    config = {"version": encoder.version, "architecture": asdict(encoder.config),
              "feature_dim": encoder.config.feature_dim,
              "labels": list(LABELS), "scene_kinds": list(SCENE_NAMES),
              "features": "global mean of the last block, minus the training frames' mean, divided by the square root "
                          "of their mean per-dimension variance", **record}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


# -- using it -----------------------------------------------------------------------------------

def load_encoder(folder: str | Path | None = None) -> FrameEncoder:
    """The shipped encoder (:data:`SHIPPED_ENCODER`), or one written by :func:`save_encoder`.

    The weights must match the folder's sha256 manifest (a folder without one is refused: scores
    are only comparable when the bytes are known), be finite and fit the architecture."""
    folder = SHIPPED_ENCODER if folder is None else Path(folder)
    config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    data = read_json(config_path)
    if not isinstance(data, dict) or "architecture" not in data or "version" not in data:
        raise ValueError(f"{config_path} is not an encoder config: it needs 'version' and 'architecture'")
    if list(data.get("labels", [])) != list(LABELS) or list(data.get("scene_kinds", [])) != list(SCENE_NAMES):
        raise ValueError(f"{config_path} was trained with labels {data.get('labels')} and scene kinds "
                         f"{data.get('scene_kinds')}, this renderer has {list(LABELS)} and {list(SCENE_NAMES)}")
    encoder = FrameEncoder(EncoderConfig.from_dict(data["architecture"], str(config_path)), version=data["version"])
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    if not check_files(folder, [weights]):
        raise ValueError(f"{folder} has no sha256 manifest: an evaluation encoder is loaded only with the hashes "
                         f"written beside its weights")
    try:
        state = safetensors.torch.load_file(weights)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file ({err})") from err
    check_finite(state, weights)
    expected = encoder.state_dict()
    if state.keys() != expected.keys() or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError(f"the weights in {weights} do not fit the architecture in {config_path}")
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


@lru_cache(maxsize=1)
def _shipped_encoder() -> FrameEncoder:
    return load_encoder()


def _encoder_and_frames(encoder: FrameEncoder | None, frames) -> tuple[FrameEncoder, torch.Tensor]:
    """The encoder to use (default: the shipped one, loaded once) and the frames as a tensor, checked."""
    encoder = _shipped_encoder() if encoder is None else encoder
    if encoder.training:
        raise ValueError("the encoder is in training mode (batch statistics would mix frames): call .eval() first")
    frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim != 4:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got shape {tuple(frames.shape)}")
    return encoder, frames


@torch.inference_mode()
def features(frames, encoder: FrameEncoder | None = None, batch_size: int = 512) -> np.ndarray:
    """(N, H, W, 3) uint8 frames (numpy or torch) → (N, D) float64 features (default encoder:
    the shipped one, loaded once)."""
    encoder, frames = _encoder_and_frames(encoder, frames)
    if len(frames) == 0:
        return np.zeros((0, encoder.config.feature_dim))
    parts = [encoder.embed(frames[start:start + batch_size]) for start in range(0, len(frames), batch_size)]
    return torch.cat(parts).double().numpy()


@torch.inference_mode()
def segment(frames, encoder: FrameEncoder | None = None, batch_size: int = 512) -> np.ndarray:
    """(N, H, W, 3) uint8 frames → (N, H, W) int64 :data:`~minwm_env.world.renderer.LABELS`
    class of each pixel as the encoder's segmentation head reads it (what the frame looks like
    it shows, for frames nobody rendered)."""
    encoder, frames = _encoder_and_frames(encoder, frames)
    parts = [encoder(frames[start:start + batch_size]).segmentation.argmax(1)
             for start in range(0, len(frames), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, *frames.shape[1:3]), dtype=np.int64)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(features_a, features_b, *, shrinkage: float = 0.0) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets:
    ``||mu_a - mu_b||² + Tr(Σa + Σb - 2 (Σa Σb)^{1/2})`` (FID, Heusel et al. 2017, eq. 6).

    In float64; ``Tr (Σa Σb)^{1/2}`` is taken as ``Tr (Σa^{1/2} Σb Σa^{1/2})^{1/2}`` (the same
    eigenvalues), a symmetric PSD matrix whose square root ``eigh`` gives stably (tiny negative
    eigenvalues from rounding clipped to 0). Covariances are unbiased (N - 1).

    Sample size: a sample covariance of N ≤ D points is singular, so each set needs N > D
    (ValueError otherwise), and the FD of two samples of one distribution has a floor that
    falls roughly like 1/N: compare with the truth-vs-truth floor at the same N (module
    docstring). ``shrinkage`` s in [0, 1) allows smaller N by using ``(1 - s) Σ + s (Tr Σ / D) I``
    for both sets (Ledoit & Wolf's target; a fixed s, so it is the same map for every set); scores
    with different s are not comparable.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) arrays of one D, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features hold NaN or inf")
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    dim = a.shape[1]
    smallest = 2 if shrinkage > 0 else dim + 1
    if min(len(a), len(b)) < smallest:
        raise ValueError(f"a Fréchet distance over {dim} features needs at least {smallest} samples per set (a "
                         f"covariance of N <= D points is singular), got {len(a)} and {len(b)}: pass more frames, "
                         f"or a shrinkage > 0")

    def gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        covariance = np.atleast_2d(np.cov(x, rowvar=False))
        if shrinkage:
            covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
        return x.mean(axis=0), covariance

    (mean_a, cov_a), (mean_b, cov_b) = gaussian(a), gaussian(b)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    distance = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
    return max(distance, 0.0)  # rounding can leave -1e-13 for identical sets


def frame_distance(model_frames, truth_frames, encoder: FrameEncoder | None = None, *, shrinkage: float = 0.0) -> float:
    """FD between two sets of uint8 frames (N, H, W, 3) in the encoder's feature space (default:
    the shipped encoder); the sets may differ in size, each needs N > D (or ``shrinkage``)."""
    encoder = _shipped_encoder() if encoder is None else encoder
    return frechet_distance(features(model_frames, encoder), features(truth_frames, encoder), shrinkage=shrinkage)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minwm_env.eval.features", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", description=TrainConfig.__doc__, help=TrainConfig.__doc__)
    add_dataclass_arguments(train, TrainConfig)
    values = vars(parser.parse_args(argv))
    values.pop("command")
    try:
        config = TrainConfig(**values)
    except ValueError as err:
        parser.error(str(err))
    record = train_encoder(config)
    held_out = record["held_out"]
    print(f"wrote {config.out}: held-out pixel accuracy {held_out['pixel_accuracy']:.3f}, mIoU "
          f"{held_out['mean_iou']:.3f}, scene kind accuracy {held_out['scene_kind_accuracy']:.3f} "
          f"({record['training']['train_s']:.0f} s training)", file=sys.stderr)


if __name__ == "__main__":
    main()
