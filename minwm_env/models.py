"""Model presets and loading: a world model = causal backbone + latent codec + its settings.

``load_model("tiny")`` builds a preset in memory (random weights, seeded);
``load_model("/path/to/Wan2.1-T2V-1.3B-Diffusers")`` reads a local diffusers-format folder
(``transformer/`` and ``vae/``, each a ``config.json`` plus safetensors weights, sharded or
not) and an optional ``minwm.json`` with our settings. Nothing is ever downloaded. Broken
folders fail loudly, naming the file: a missing folder or file, a config that does not match
its weights, a truncated or corrupted weights file, one whose bytes differ from the sha256
recorded when it was written, a tensor holding NaN or inf (:mod:`minwm_env.integrity`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from diffusers import AutoencoderKLHunyuanVideo15, AutoencoderKLWan, HunyuanVideo15Transformer3DModel, WanTransformer3DModel

from .backbones import CausalBackbone, CausalHunyuan15, CausalWan
from .codec import SpaceToDepthCodec, WanVAECodec, load_codec
from .hunyuan_vae import HunyuanVAECodec
from .conditioning import ConditioningConfig, read_conditioning_config
from .flow import check_prediction_type
from .integrity import check_files, check_finite, describe_non_finite, non_finite, weight_files, write_manifest
from .jsonfile import read_json
from .streaming import MEMORY_MODES, ChunkStream
from .depth import DEPTH_DIR, DepthNet, load_depth_model
from .fill import FILL_DIR, FillNet, load_fill_model
from .warp import WARP_DEPTH_SOURCES, WARP_FILLS, warped_reference

MODEL_WARP_FILLS = (*WARP_FILLS, "net")

SETTINGS_FILE = "minwm.json"
SAMPLER_KINDS = ("few-step", "euler")
CONDITIONING_DIR = "conditioning"
# Trained models shipped inside the package, by name (docs/default_model.md is the model card).
# "minwm-default" is the `default` preset's architecture trained by our own pipeline on the
# rendered world; the preset name "default" alone is that architecture with random weights.
SHIPPED_MODELS: dict[str, Path] = {"minwm-default": Path(__file__).parent / "assets" / "minwm-default",
                                   # the pusher arm's world model (docs/robots.md): scripts/train_arm.sh
                                   "minwm-arm": Path(__file__).parent / "assets" / "minwm-arm"}
DEFAULT_MODEL = "minwm-default"


@dataclass(frozen=True)
class ModelSettings:
    """What a checkpoint needs besides weights; saved as ``minwm.json`` beside them."""

    height: int = 480
    """frame height in pixels"""
    width: int = 832
    """frame width in pixels"""
    prediction_type: str = "v"
    """what the backbone predicts: "v" (velocity) or "x0" (clean latent)"""
    chunk_frames: int = 4
    """latent frames generated per autoregressive step"""
    window_frames: int = 16
    """context frames kept in the rolling KV cache"""
    sink_frames: int = 0
    """first frames of an episode that never leave the cache"""
    sampler_timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    """few-step schedule before shifting"""
    sampler: str = "few-step"
    """the default sampler: "few-step" (x0 at each of ``sampler_timesteps``, re-noised with fresh
    noise: the DMD students') or "euler" (deterministic Euler on a shifted grid of
    ``len(sampler_timesteps)`` steps, no guidance: minWM's HunyuanVideo-1.5 rollout)"""
    shift: float = 5.0
    """timestep shift"""
    intrinsics: tuple[float, float, float, float] = (0.5, 0.5, 0.5, 0.5)
    """camera intrinsics [fx/W, fy/H, cx/W, cy/H] used for camera conditioning (minWM's inference default)"""
    residual_reference: bool = False
    """the backbone's output is added to the last clean latent frame before the chunk"""
    restart_context: bool = False
    """after each chunk the context (cache and reference) is the chunk's last RGB frame encoded as
    a start image, the kind of context frame a model trained on clip starts has seen (needs a
    codec with ``restart_latent``, e.g. space-to-depth)"""
    warp_reference: bool = False
    """the residual reference of each new frame is the last clean RGB frame reprojected into that
    frame's camera (:mod:`minwm_env.warp`; needs ``residual_reference``, camera-delta actions and a
    codec whose latents are pixels, e.g. space-to-depth)"""
    warp_depth: float | None = None
    """the depth, in world units, of the plane a warp reprojects through (None: infinitely far,
    so only rotations move the reference)"""
    warp_depth_source: str = "plane"
    """what a warp reprojects through: "plane" (one plane at ``warp_depth``) or "model" (each
    reference frame's own depth, predicted by the model folder's depth net, ``depth/``,
    :mod:`minwm_env.depth`; never-seen pixels are filled through the plane)"""
    warp_fill: str = "border"
    """what a warp puts where the reference never looked: "border" (its nearest border pixel,
    stretched), "blank" (zero, mid-grey) or "net" (what the model folder's fill net draws,
    ``fill/``, :mod:`minwm_env.fill`)"""
    warp_validity: bool = False
    """the validity of every warped pixel (1 seen, 0 never seen) travels with the reference, as
    input channels beside the noisy latent (the backbone's in_channels say so)"""
    residual_gate: bool = False
    """the output only changes what the warp never saw: it is scaled by 1 - validity pixel by
    pixel before it is added to the warped reference (needs ``warp_validity``; a Wan backbone)"""
    residual_smooth: float | None = None
    """pixels: the output is blurred by a Gaussian of this σ in pixel space before the gate, so
    its correction of what the warp never saw changes colours without tiling the drawing with
    the transformer's 8×8-pixel blocks (needs ``residual_gate``; None: not blurred)"""
    memory_frames: int = 0
    """past frames a stream keeps by place (the env's ``memory`` default; 0: no memory)"""
    memory_k: int = 2
    """stored frames at most that one chunk retrieves"""
    memory_sharpen: float | None = None
    """world units: stored frames whose camera is this near the new one replace the last frame's
    warp wherever they have been resampled fewer times (:meth:`~minwm_env.memory.ViewMemory.composite`);
    None: memory only fills what the last frame never saw (needs memory_mode="reference")"""
    vae_attention_window: int | None = None
    """latent frames the HunyuanVideo-1.5 decoder's mid-block attention keeps while streaming
    (None: all, exact but growing with the stream; N: the last N, flat, exact for N frames)"""
    memory_mode: str = "reference"
    """how retrieved frames reach the model: "reference" (their RGB fills what the last frame's
    warp never saw; needs warp_reference) or "context" (their latents are written into the KV
    cache at their camera poses and the chunk attends to them; needs camera conditioning)"""

    @classmethod
    def from_dict(cls, data: dict, source: str) -> "ModelSettings":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        for key in ("sampler_timesteps", "intrinsics"):
            if key in data:
                data = {**data, key: tuple(data[key])}
        settings = cls(**data)
        check_prediction_type(settings.prediction_type)
        if settings.warp_reference and not settings.residual_reference:
            raise ValueError(f"{source}: warp_reference needs residual_reference (the warp is what the output is added to)")
        if settings.warp_depth_source not in WARP_DEPTH_SOURCES:
            raise ValueError(f"{source}: warp_depth_source must be one of {WARP_DEPTH_SOURCES}, got "
                             f"{settings.warp_depth_source!r}")
        if settings.warp_depth_source == "model" and not settings.warp_reference:
            raise ValueError(f"{source}: warp_depth_source='model' needs warp_reference")
        if settings.warp_fill not in MODEL_WARP_FILLS:
            raise ValueError(f"{source}: warp_fill must be one of {MODEL_WARP_FILLS}, got {settings.warp_fill!r}")
        if (settings.warp_fill != "border" or settings.warp_validity) and not settings.warp_reference:
            raise ValueError(f"{source}: warp_fill={settings.warp_fill!r} and warp_validity="
                             f"{settings.warp_validity} need warp_reference")
        if settings.residual_gate and not settings.warp_validity:
            raise ValueError(f"{source}: residual_gate needs warp_validity (the gate is 1 - each pixel's validity)")
        if settings.residual_smooth is not None and not (settings.residual_gate and
                                                         math.isfinite(settings.residual_smooth) and
                                                         settings.residual_smooth > 0):
            raise ValueError(f"{source}: residual_smooth must be a positive number of pixels or null, and needs "
                             f"residual_gate, got {settings.residual_smooth} with residual_gate={settings.residual_gate}")
        if settings.memory_frames < 0 or settings.memory_k < 0:
            raise ValueError(f"{source}: memory_frames and memory_k must be >= 0, got {settings.memory_frames}, "
                             f"{settings.memory_k}")
        if settings.sampler not in SAMPLER_KINDS:
            raise ValueError(f"{source}: sampler must be one of {SAMPLER_KINDS}, got {settings.sampler!r}")
        if settings.vae_attention_window is not None and not settings.vae_attention_window >= 1:
            raise ValueError(f"{source}: vae_attention_window must be >= 1 or null, got {settings.vae_attention_window}")
        if settings.memory_mode not in MEMORY_MODES:
            raise ValueError(f"{source}: memory_mode must be one of {MEMORY_MODES}, got {settings.memory_mode!r}")
        if settings.memory_frames and settings.memory_mode == "reference" and not settings.warp_reference:
            raise ValueError(f"{source}: memory_frames with memory_mode='reference' needs warp_reference (memory "
                             f"fills the warped reference); memory_mode='context' reads memory from the KV cache")
        if settings.memory_sharpen is not None and not (settings.memory_sharpen >= 0 and
                                                        settings.memory_mode == "reference"):
            raise ValueError(f"{source}: memory_sharpen must be >= 0 (world units) or null, and needs "
                             f"memory_mode='reference', got {settings.memory_sharpen} with {settings.memory_mode!r}")
        if settings.warp_depth is not None and not settings.warp_depth > 0:
            raise ValueError(f"{source}: warp_depth must be positive or null (infinitely far), got {settings.warp_depth}")
        return settings


@dataclass(frozen=True)
class ModelPreset:
    transformer: dict
    vae: dict
    settings: ModelSettings = field(default_factory=ModelSettings)
    description: str = ""
    codec: str = "wan-vae"
    """"wan-vae" (AutoencoderKLWan built from ``vae``), "hunyuan15-vae" (AutoencoderKLHunyuanVideo15)
    or "space-to-depth" (``vae`` holds its options)"""
    backbone: str = "wan"
    """the transformer family (a key of :data:`BACKBONES`)"""


# The transformer families: diffusers' class (the pretrained weights' format) and our causal adapter.
BACKBONES: dict[str, tuple[type, type]] = {
    "wan": (WanTransformer3DModel, CausalWan),
    "hunyuan15": (HunyuanVideo15Transformer3DModel, CausalHunyuan15),
}


def _backbone(backbone_class: type, transformer, settings: ModelSettings, conditioning, codec):
    """The causal adapter around ``transformer`` as ``settings`` ask (the gate groups its
    validity by the codec's frames per latent frame)."""
    if not settings.residual_gate:
        if settings.residual_smooth is not None:
            raise ValueError(f"residual_smooth={settings.residual_smooth} needs residual_gate (set it to None without "
                             f"the gate)")
        return backbone_class(transformer, settings.prediction_type, conditioning, settings.residual_reference)
    if backbone_class is not CausalWan:
        raise ValueError(f"residual_gate is built for the Wan backbone, not {backbone_class.__name__}")
    return backbone_class(transformer, settings.prediction_type, conditioning, settings.residual_reference,
                          residual_gate=codec.temporal_factor, residual_smooth=settings.residual_smooth)


def backbone_family(transformer_folder: Path) -> str:
    """The family of a diffusers transformer folder, from its config's ``_class_name`` (Wan when
    the config does not say)."""
    name = read_json(transformer_folder / "config.json").get("_class_name", WanTransformer3DModel.__name__)
    for family, (transformer_class, _) in BACKBONES.items():
        if transformer_class.__name__ == name:
            return family
    raise ValueError(f"{transformer_folder / 'config.json'}: transformer class {name!r} is not supported; supported: "
                     f"{sorted(cls.__name__ for cls, _ in BACKBONES.values())}")


# Wan2.1-T2V-1.3B: 30 blocks, width 1536 (12 heads × 128), FFN 8960, UMT5 text width 4096.
_WAN21_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6)
_TINY_Z = 4

def _default_family(description: str, *, validity: bool = False, fill: str = "border", patch: int = 2,
                    warp: bool = True, reference_input: bool = False, depth_source: str = "plane",
                    gate: bool = False) -> ModelPreset:
    """The shipped default's architecture and streaming settings (below), optionally taking the
    warped reference and its validity as input channels, with another fill or finer patches; or,
    for a fixed camera (``warp=False``), the last frame itself as the reference."""
    channels = 192  # space-to-depth 4×4 pixels × 4 frames × RGB
    extra = channels + channels // 3 if validity else channels if reference_input else 0
    return ModelPreset(
        transformer=dict(patch_size=(1, patch, patch), num_attention_heads=4, attention_head_dim=32,
                         in_channels=channels + extra, out_channels=channels,
                         text_dim=32, freq_dim=64, ffn_dim=512, num_layers=4),
        vae=dict(spatial_factor=4, temporal_factor=4, scale=2.0), codec="space-to-depth",
        settings=ModelSettings(height=64, width=64, prediction_type="x0", residual_reference=True, window_frames=1,
                               restart_context=True, warp_reference=warp, warp_depth=2.0, warp_fill=fill,
                               warp_validity=validity, warp_depth_source=depth_source, residual_gate=gate,
                               intrinsics=(0.8660254037844386, 0.8660254037844386, 0.5, 0.5)),
        description=description)


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=_TINY_Z,
                         out_channels=_TINY_Z, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2),
        vae=dict(base_dim=8, z_dim=_TINY_Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                 temperal_downsample=[False, True, True], latents_mean=[0.0] * _TINY_Z, latents_std=[1.0] * _TINY_Z),
        settings=ModelSettings(height=64, width=64),
        description="2-layer Wan and a small Wan VAE: tests and CPU smoke runs (random weights)",
    ),
    # HunyuanVideo-1.5's transformer (issue 20) at a test size, on the tiny Wan VAE: the 2·z + 1
    # input channels are its own (noisy latent, conditioning latent, mask), filled by the adapter.
    # (The ByT5 projection's hidden width is fixed at 2048 by diffusers: ~4.4M parameters.)
    "tiny-hy15": ModelPreset(
        transformer=dict(in_channels=2 * _TINY_Z + 1, out_channels=_TINY_Z, num_attention_heads=2,
                         attention_head_dim=16, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
                         text_embed_dim=32, text_embed_2_dim=32, image_embed_dim=32, rope_axes_dim=(4, 6, 6)),
        vae=dict(base_dim=8, z_dim=_TINY_Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                 temperal_downsample=[False, True, True], latents_mean=[0.0] * _TINY_Z, latents_std=[1.0] * _TINY_Z),
        settings=ModelSettings(height=64, width=64), backbone="hunyuan15",
        description="2-layer HunyuanVideo-1.5 transformer on the tiny Wan VAE: tests and CPU smoke runs (random weights)",
    ),
    # The shipped default's architecture (issue 11): a ~1.5M-parameter Wan on a lossless
    # space-to-depth latent (64×64 RGB → 16×16×192), predicting x0 as a residual on the last
    # clean frame reprojected into each new camera through a plane 2 units ahead (the best of
    # 1-4 and infinity, measured on the training clips); streaming restarts each chunk's context
    # from its last RGB frame (measured: docs/default_model.md).
    "default": _default_family(
        "4-layer Wan (width 128) on a space-to-depth latent at 64x64: the default world model's architecture"),
    # minwm-default v2 (issue 18): the same network, told what the warp knows. The warped
    # reference enters beside the noisy latent (not only as what the output is added to), and
    # what the last frame never saw is left blank, with each pixel's validity beside it, so
    # new content is drawn by the network instead of arriving as stretched border pixels.
    "default-v2": _default_family("default's network seeing the warped reference and its validity (blank where "
                                  "unseen)", validity=True, fill="blank"),
    # The same, with the never-seen pixels streaked from the border as the shipped model has
    # them: the network knows which pixels those are, but starts from the streak (measured one
    # chunk after a clean start, the streak is a better guess of a new strip than any mean).
    "default-v2b": _default_family("default's network seeing the warped reference (border-streaked where unseen) "
                                   "and its validity", validity=True),
    # v3 candidate (issue 18): default-v2b on tokens of one latent pixel (a 4×4-pixel cell of
    # 4 frames) instead of 2×2 of them. With 2×2 patches every token's 768 output values are a
    # linear map of its 128-wide state, so what it can draw is a fixed 128-dimensional family
    # of 8×8-pixel patches: measured, a new strip comes out as 8×8 blocks of colour.
    "default-v3": _default_family("default-v2b with one token per latent pixel (4x4-pixel cells): finer tokens",
                                  validity=True, patch=1),
    # v4 (issue 18): default-v2b whose warp reprojects through the depth its own depth net
    # predicts for the reference frame (minwm_env/depth.py), the plane only filling what the
    # reference never saw: an approached object grows, an orbited one moves with its parallax.
    "default-v4": _default_family("default-v2b warping through its own predicted depth (needs a depth net)",
                                  validity=True, depth_source="model"),
    # v5 candidate (issue 18): default-v4 whose output only changes what the warp never saw
    # (ModelSettings.residual_gate). Measured on v4's weights without training for it: standing
    # still stays exact (100 dB) and blocks shrink (blockiness 1.21 → 1.08), but the pixels the
    # start frame showed lose what v4's network corrected there (+1.13 → +0.71 dB pooled).
    "default-v4g": _default_family("default-v4 whose output is gated to the pixels its warp never saw",
                                   validity=True, depth_source="model", gate=True),
    # v6 candidate (issue 18): default-v4g whose never-seen pixels are drawn by a pixel-space fill
    # net (minwm_env/fill.py) before the transformer refines them, instead of the border streak.
    "default-v4f": _default_family("default-v4g with a fill net drawing what the warp never saw (needs a depth "
                                   "net and a fill net)", validity=True, depth_source="model", gate=True,
                                   fill="net"),
    # A robot arm seen by a fixed camera (issue 22, docs/robots.md): nothing to warp, so the
    # reference is the last frame itself, seen beside the noisy latent and what the output is
    # added to; the arm's joint commands enter through the action branch.
    "arm": _default_family("default's network for a fixed camera: the last frame as reference and input "
                           "(robot-arm world models)", warp=False, reference_input=True),
    "wan21-1.3b": ModelPreset(
        transformer=_WAN21_13B,
        vae={},  # diffusers' defaults are the Wan2.1 VAE
        settings=ModelSettings(height=480, width=832),
        description="the Wan2.1-T2V-1.3B architecture with random weights, for timing",
    ),
    # HunyuanVideo-1.5 (8.3B, diffusers' default config is the released 480p model's) and its VAE
    # (32 channels, 16x spatial, 4x temporal); the decoder's attention keeps 31 latent frames
    # (121 RGB frames, the model's clip length) so long streams stay flat.
    "hy15-8b": ModelPreset(
        transformer={}, vae={},
        settings=ModelSettings(height=480, width=832, chunk_frames=4, vae_attention_window=31),
        codec="hunyuan15-vae", backbone="hunyuan15",
        description="the HunyuanVideo-1.5 8.3B architecture with random weights, for timing and FLOP counts",
    ),
}


@dataclass
class WorldModel:
    """A loaded model: the causal backbone, its latent codec and its settings."""

    backbone: CausalBackbone
    codec: WanVAECodec | HunyuanVAECodec | SpaceToDepthCodec
    settings: ModelSettings
    depth: DepthNet | None = None
    """the depth net a ``warp_depth_source="model"`` warp reprojects through (frozen)"""
    fill: FillNet | None = None
    """the fill net that draws what a ``warp_fill="net"`` warp never saw (frozen)"""

    def __post_init__(self):
        if self.settings.warp_depth_source == "model" and self.depth is None:
            raise ValueError("warp_depth_source='model' needs a depth net: train one (python -m minwm_train.depth) "
                             "and attach it to the model folder (--attach), or build the model with depth=")
        if self.settings.warp_fill == "net" and self.fill is None:
            raise ValueError("warp_fill='net' needs a fill net: train one (python -m minwm_train.fill) and attach it "
                             "to the model folder (--attach), or build the model with fill=")
        extra = getattr(self.backbone, "reference_channels", 0)
        if not extra:
            return
        channels = self.backbone.latent_channels
        expected = channels + (channels // 3 if self.settings.warp_validity else 0)
        if not self.settings.residual_reference or extra != expected:
            raise ValueError(f"the backbone takes {extra} input channels beside its {channels}-channel latent; with "
                             f"residual_reference={self.settings.residual_reference} and warp_validity="
                             f"{self.settings.warp_validity} the reference has "
                             f"{expected if self.settings.residual_reference else 0}")

    @property
    def device(self) -> torch.device:
        return self.backbone.transformer.proj_out.weight.device  # (Wan and HunyuanVideo-1.5 alike)

    def residual_reference(self, reference: torch.Tensor, reference_c2w: torch.Tensor, previous_c2w: torch.Tensor,
                           c2w: torch.Tensor, intrinsics: torch.Tensor, memory=None, memory_k: int = 0,
                           generation: torch.Tensor | None = None, reference_depth: torch.Tensor | None = None):
        """What a residual backbone adds its output to, for F new latent frames.

        reference (B, C, 1 or F, h, w): the last clean latent frame before each new frame, its
        last RGB frame seen from ``reference_c2w`` (B, 1 or F, 4, 4); previous_c2w and c2w
        (B, F, 4, 4): the poses of the latent frame before each new frame and of the frame;
        intrinsics (B, F, 4). Plain residual models take ``reference`` as it is; with
        ``warp_reference`` it is reprojected into every new frame's cameras (B, C, F, h, w), and
        with ``warp_validity`` each pixel's validity follows the colours (B, C + C / 3, F, h, w).
        A ``memory`` (:class:`~minwm_env.memory.ViewMemory`) fills what the last frame never saw
        from up to ``memory_k`` stored frames. ``generation`` (B, 1, H, W), with a memory and
        ``memory_sharpen`` set: the last RGB frame's resamplings per pixel; the memory then also
        sharpens, and the call returns ``(reference, (generation, validity))``
        (:func:`~minwm_env.warp.warped_reference`). ``reference_depth`` (B, H, W): the depth
        net's depth of the reference's last RGB frame, when the caller has computed it.
        """
        if not self.settings.warp_reference:
            return reference
        if not hasattr(self.codec, "unpack"):
            raise ValueError(f"warp_reference needs a codec whose latents are pixels (space-to-depth); this model's "
                             f"codec is {type(self.codec).__name__}")
        device = reference.device
        # a fill net composites over the border-fill warp: its colours (and the memory's) are
        # not premultiplied by validity, so a seam pixel is validity · colour + the rest drawn
        return warped_reference(self.codec, reference, reference_c2w.to(device), previous_c2w.to(device),
                                c2w.to(device), intrinsics.to(device), self.settings.warp_depth,
                                "border" if self.settings.warp_fill == "net" else self.settings.warp_fill,
                                self.settings.warp_validity, memory, memory_k,
                                depth_net=self.depth if self.settings.warp_depth_source == "model" else None,
                                generation=generation, sharpen_distance=self.settings.memory_sharpen or 0.0,
                                reference_depth=reference_depth,
                                fill_net=self.fill if self.settings.warp_fill == "net" else None)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.transformer.proj_out.weight.dtype  # never a module kept in float32

    def stream(self, *, batch_size: int = 1, num_branches: int = 1, chunk_frames: int | None = None,
               window_frames: int | None = None, sink_frames: int | None = None,
               memory_frames: int | None = None, fold_writes: bool = True, static_shapes: bool = False,
               compile=None) -> ChunkStream:
        """A :class:`~minwm_env.streaming.ChunkStream` of this model: the one place that decides
        what a streamed chunk is conditioned on and what it leaves in the cache (sizes default
        to the settings). ``static_shapes``: a static cache; ``compile``: a torch.compile mode
        or backend for the streaming forward (implies static shapes)."""
        return ChunkStream(self, batch_size=batch_size, num_branches=num_branches, chunk_frames=chunk_frames,
                           window_frames=window_frames, sink_frames=sink_frames, memory_frames=memory_frames,
                           fold_writes=fold_writes, static_shapes=static_shapes, compile=compile)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "WorldModel":
        for module in (self.backbone, self.codec.module, self.depth, self.fill):
            if module is not None:
                torch.nn.Module.to(module, device=device)
        if dtype is not None:
            for module in (self.backbone.transformer, self.codec.module, self.backbone.conditioning):
                if module is not None:
                    _cast_keeping_fp32(module, dtype)
        return self

    def eval(self) -> "WorldModel":
        self.backbone.eval()
        self.codec.module.eval()
        for net in (self.depth, self.fill):
            if net is not None:
                net.eval()
        return self

    def save_pretrained(self, path: str | Path) -> None:
        """Write a folder :func:`load_model` reads: ``transformer/``, the codec, ``minwm.json`` and
        ``conditioning/``, each weights folder with its sha256 manifest (:mod:`minwm_env.integrity`).
        A model holding NaN or inf is refused (ValueError) before anything is written."""
        path = Path(path)
        _refuse_non_finite(self, path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.transformer.save_pretrained(path / "transformer", safe_serialization=True)
        write_manifest(path / "transformer", weight_files(path / "transformer"))
        self.codec.save(path)
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.settings).items()}
        (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        if self.backbone.conditioning is not None:
            self.save_conditioning(path / CONDITIONING_DIR)
        if self.depth is not None:
            self.depth.save(path / DEPTH_DIR)
        if self.fill is not None:
            self.fill.save(path / FILL_DIR)

    def save_conditioning(self, folder: str | Path) -> None:
        """The conditioning branches alone (safetensors + JSON spec), apart from the backbone."""
        if self.backbone.conditioning is None:
            raise ValueError("this model has no conditioning branches to save")
        self.backbone.conditioning.save(folder)


def _refuse_non_finite(model: WorldModel, path: Path) -> None:
    parts = {"transformer": model.backbone.transformer, "codec": model.codec.module,
             "conditioning": model.backbone.conditioning}
    tensors = {f"{part}.{key}": value for part, module in parts.items() if module is not None
               for key, value in module.state_dict().items()}
    counts = non_finite(tensors)
    if counts:
        raise ValueError(f"refusing to save a model with NaN or inf weights to {path}: "
                         f"{describe_non_finite(tensors, counts)}")


def _cast_keeping_fp32(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast to ``dtype`` except the submodules diffusers keeps in float32 (time embedding, norms)."""
    # nn.Module.to, not ModelMixin.to: the latter warns about exactly the float32 modules kept below.
    torch.nn.Module.to(module, dtype=dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, param in module.named_parameters():
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()


def build_preset(name: str, seed: int = 0, conditioning: ConditioningConfig | None = None,
                 depth: DepthNet | str | Path | None = None, fill: FillNet | str | Path | None = None,
                 **settings_overrides) -> WorldModel:
    """A new model of a preset (random weights, seeded). ``depth``: the depth net (or its
    folder) of a preset whose warp reprojects through predicted depth; ``fill``: the fill net
    (or its folder) of one whose warp fill is "net"."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    preset = PRESETS[name]
    settings = replace(preset.settings, **settings_overrides)
    with torch.random.fork_rng(devices=[]):  # the same seed always builds the same weights
        torch.manual_seed(seed)
        transformer_class, backbone_class = BACKBONES[preset.backbone]
        transformer = transformer_class(**preset.transformer)
        if preset.codec == "space-to-depth":
            codec = SpaceToDepthCodec(**preset.vae)
        elif preset.codec == "hunyuan15-vae":
            codec = HunyuanVAECodec(AutoencoderKLHunyuanVideo15(**preset.vae), settings.vae_attention_window)
        else:
            codec = WanVAECodec(AutoencoderKLWan(**preset.vae))
        backbone = _backbone(backbone_class, transformer, settings, conditioning, codec)
    if settings.residual_reference:  # a new residual model starts as "nothing changes"
        torch.nn.init.zeros_(transformer.proj_out.weight)
        torch.nn.init.zeros_(transformer.proj_out.bias)
    depth, fill = _small_nets(depth, fill)
    return WorldModel(backbone, codec, settings, depth, fill).eval()


def _small_nets(depth, fill) -> tuple[DepthNet | None, FillNet | None]:
    """The depth and fill nets given as nets, folders or None, loaded."""
    return (load_depth_model(depth) if isinstance(depth, (str, Path)) else depth,
            load_fill_model(fill) if isinstance(fill, (str, Path)) else fill)


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "diffusion_pytorch_model.safetensors"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{index} is not a valid safetensors index ({err})") from err
        files = [folder / s for s in shards]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f} is listed in {index} but does not exist")
        return files
    raise FileNotFoundError(f"no weights in {folder}: expected diffusion_pytorch_model.safetensors "
                            f"(or a sharded .index.json); only safetensors are loaded, never pickles")


def load_component(folder: Path, cls):
    """Build ``cls`` from ``folder/config.json`` and load its safetensors, checking every file
    against the folder's sha256 manifest (a folder without one, e.g. from the hub, loads with the
    other checks alone) and every tensor: finite, and of the shape the config gives it."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist (a model folder needs transformer/ and vae/ subfolders)")
    config_path = folder / "config.json"
    config = read_json(config_path)
    if config.get("_class_name", cls.__name__) != cls.__name__:
        raise ValueError(f"{config_path} describes a {config['_class_name']}, expected {cls.__name__}")
    try:
        model = cls.from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path} is not a valid {cls.__name__} config ({err})") from err
    files = _weight_files(folder)
    check_files(folder, files)  # against the folder's sha256 manifest, when it has one
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            tensors = safetensors.torch.load_file(path)
        except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} is not a readable safetensors file, it may be truncated or corrupted ({err})") from err
        check_finite(tensors, path)
        state.update(tensors)
    expected = model.state_dict()
    ignored = tuple(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or ())
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(k for k in state.keys() - expected.keys() if not any(p in k for p in ignored))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
                  for k in sorted(expected.keys() & state.keys()) if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        details = "; ".join(filter(None, [
            f"missing {missing[:3]}{' …' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {unexpected[:3]}{' …' if len(unexpected) > 3 else ''}" if unexpected else "",
            f"shape mismatch {mismatched[:3]}" if mismatched else ""]))
        raise ValueError(f"the weights in {folder} do not match {config_path}: {details}")
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model.eval()


def load_model(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0, conditioning: ConditioningConfig | str | Path | None = None,
               depth: DepthNet | str | Path | None = None, fill: FillNet | str | Path | None = None,
               **settings_overrides) -> WorldModel:
    """A shipped model (see :data:`SHIPPED_MODELS`), a preset name (see :data:`PRESETS`; random
    weights) or a local diffusers-format folder.

    ``conditioning`` adds branches: a :class:`ConditioningConfig` (new, zero-initialised) or a
    folder saved by :meth:`WorldModel.save_conditioning` (trained weights). By default a
    folder's own ``conditioning/`` subfolder is used when it has one. ``depth``: a depth net
    (or its folder) for the warp, in place of the folder's own ``depth/``; a preset that warps
    through predicted depth needs it. ``fill``: likewise the fill net, in place of ``fill/``.
    """
    depth, fill = _small_nets(depth, fill)
    branch_weights = None
    if isinstance(conditioning, (str, Path)):
        branch_weights, conditioning = Path(conditioning), read_conditioning_config(conditioning)
    if isinstance(source, str) and source in PRESETS:
        model = build_preset(source, seed=seed, conditioning=conditioning, depth=depth, fill=fill,
                             **settings_overrides)
    else:
        folder = SHIPPED_MODELS.get(source, Path(source)) if isinstance(source, str) else Path(source)
        if not folder.is_dir():
            if isinstance(source, str) and source in SHIPPED_MODELS:
                raise FileNotFoundError(f"the shipped model {source!r} is missing from this install ({folder}); "
                                        f"reinstall the package (pip install -e .)")
            raise FileNotFoundError(f"model {str(source)!r} is neither a shipped model ({sorted(SHIPPED_MODELS)}), "
                                    f"a preset ({sorted(PRESETS)}) nor an existing folder")
        settings_path = folder / SETTINGS_FILE
        settings = ModelSettings()
        if settings_path.is_file():
            settings = ModelSettings.from_dict(read_json(settings_path), str(settings_path))
        settings = replace(settings, **settings_overrides)
        if conditioning is None and (folder / CONDITIONING_DIR).is_dir():
            branch_weights = folder / CONDITIONING_DIR
            conditioning = read_conditioning_config(branch_weights)
        transformer_class, backbone_class = BACKBONES[backbone_family(folder / "transformer")]
        transformer = load_component(folder / "transformer", transformer_class)
        codec = load_codec(folder, settings.vae_attention_window)
        with torch.random.fork_rng(devices=[]):  # new conditioning branches: seeded initialisation
            torch.manual_seed(seed)
            backbone = _backbone(backbone_class, transformer, settings, conditioning, codec)
        if depth is None and (folder / DEPTH_DIR).is_dir():
            depth = load_depth_model(folder / DEPTH_DIR)
        if fill is None and (folder / FILL_DIR).is_dir():
            fill = load_fill_model(folder / FILL_DIR)
        model = WorldModel(backbone, codec, settings, depth, fill)
    if branch_weights is not None:
        model.backbone.conditioning.load_weights(branch_weights)
    return model.to(device, dtype).eval()
