"""Convert minWM's released world-model checkpoints into minwm model folders (issue 20).

minWM (github.com/shengshu-ai/minWM) releases two camera-controlled world models; what they
are on disk, as read from its code (docs/convert.md has the file and line references):

* **Wan2.1-T2V-1.3B Action2V** (``Wan21/Action2V/<stage>/model.pt``): a ``torch.save``d dict
  ``{"generator_ema": state}`` or ``{"generator": state}``; ``state`` is the state dict of its
  ``WanDiffusionWrapper``, i.e. the original (non-diffusers) Wan names behind a ``model.``
  prefix (``model.blocks.3.self_attn.q.weight``), sometimes with FSDP's
  ``_fsdp_wrapped_module.`` segment, plus one PRoPE output projection per block
  (``model.blocks.N.self_attn.prope_o``). It holds no config and no VAE.
* **HunyuanVideo-1.5 Action2V / TI2V** (``HY15/<line>/<stage>/``): a folder with
  ``config.json`` (the original Tencent constructor arguments: ``hidden_size``, ``heads_num``,
  ``mm_double_blocks_depth``, ...) and ``diffusion_pytorch_model.safetensors`` in the original
  Tencent names (``double_blocks.N.img_attn_q``, ``txt_mod``, ``txt_in.individual_token_refiner``,
  ``final_layer``), plus ``double_blocks.N.img_attn_prope_proj`` (PRoPE) and optionally
  ``action_in`` (a timestep-style embedder of WorldPlay's 81 discrete action labels).

:func:`convert_minwm` maps every key onto a minwm model folder: the backbone in diffusers'
names (``WanTransformer3DModel`` / ``HunyuanVideo15Transformer3DModel``, the correspondences
of diffusers' own conversion scripts), the camera/action branches as our ``conditioning/``
(``prope_o`` / ``img_attn_prope_proj`` → ``prope_out.N``, ``action_in`` → ``action_mlp``,
exactly), the codec from a base model folder (minWM's checkpoints hold no VAE) and
``minwm.json`` with minWM's inference settings. A key it cannot place, a key the architecture
needs that the checkpoint lacks, or a tensor of the wrong shape stops the conversion with an
error naming them; nothing is dropped unless asked (``action_in="drop"``).

Command line: ``python -m minwm_env.convert CHECKPOINT --out FOLDER --base BASE``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from .codec import load_codec
from .conditioning import ActionSpec, ConditioningConfig
from .jsonfile import read_json
from .models import BACKBONES, ModelSettings, WorldModel, backbone_family

FAMILIES = ("wan", "hunyuan15")
ACTION_IN_MODES = ("map", "drop")
PROVENANCE_FILE = "minwm_conversion.json"

# WorldPlay's discrete actions as minWM uses them (HY15/trainer/dataset_camera/action_utils.py):
# label = 9 · translation class + rotation class, each class in 0..8.
MINWM_ACTION_CLASSES = 81
# minWM's action_in embeds a label like a timestep: a 256-wide cos/sin embedding, period 10000.
_ACTION_FREQUENCIES = 256
_ACTION_MAX_PERIOD = 10000.0

# What minWM's inference scripts run (docs/convert.md, "Settings"): 480x832, v-prediction,
# chunks of 4 latent frames, timesteps [1000, 750, 500, 250] shifted by 5. Wan's cache holds
# local_attn_size = 20 latent frames including the chunk being made, i.e. 16 of context; the
# HunyuanVideo-1.5 rollout keeps every past frame (its 20-frame demo: at most 16 of context).
# Intrinsics [fx/W, fy/H, cx/W, cy/H]: Wan's inference passes 0.5 throughout, HunyuanVideo-1.5's
# the WorldPlayGen camera (f ≈ 969.7 px at 1920x1080); PRoPE zeroes the principal point anyway.
MINWM_SETTINGS: dict[str, dict] = {
    "wan": dict(height=480, width=832, prediction_type="v", chunk_frames=4, window_frames=16, sink_frames=0,
                sampler_timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0, intrinsics=(0.5, 0.5, 0.5, 0.5)),
    "hunyuan15": dict(height=480, width=832, prediction_type="v", chunk_frames=4, window_frames=16, sink_frames=0,
                      sampler_timesteps=(1000.0, 750.0, 500.0, 250.0), shift=5.0, sampler="euler",
                      intrinsics=(0.5050505, 0.89786756, 0.5, 0.5)),
}

# What the converted folder cannot say in minwm.json, recorded beside it (PROVENANCE_FILE).
_MINWM_INFERENCE_NOTES = {
    "wan": {
        "sampler": "few-step: predict x0 at each of the 4 warped timesteps, re-noise with fresh noise "
                   "(Wan21/pipeline/causal_inference.py); minwm's FewStepSampler, no guidance",
        "text": "UMT5-XXL embeddings of the prompt, zero-padded to 512 tokens, no mask",
        "start": "text-to-video: chunk 0 is generated from noise (latent frames 0-3), no start image",
    },
    "hunyuan15": {
        "sampler": "Euler on the 4-step grid shift(1 - i/4), shift 5, guidance 1 (HY15/hy15_inference.py "
                   "run_inference_rollout); minwm.json says sampler=\"euler\", which the env runs by "
                   "default (EulerSampler(num_steps=4, shift=5.0, guidance_scale=1.0))",
        "text": "Qwen2.5-VL prompt embeddings with their mask, ByT5 glyph embeddings of the caption (256 tokens, "
                "masked) and SigLIP embeddings of the start image; text stream at timestep 0",
        "start": "image-to-video: the start image's latent sits in frame 0's conditioning channels (mask 1) and "
                 "frame 0 is denoised with chunk 0; minwm writes the start image as a clean frame 0 instead",
    },
}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly (the message names what and why)."""


@dataclass
class ConversionReport:
    """What :func:`convert_minwm` read and wrote."""

    family: str
    source: str
    out: str
    checkpoint_keys: int
    transformer_keys: int
    conditioning_keys: int
    conditioning: dict
    settings: dict
    chosen_entry: str | None = None
    filled_from_base: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"converted the minWM {self.family} checkpoint {self.source} -> {self.out}",
                 f"  {self.checkpoint_keys} checkpoint tensors -> {self.transformer_keys} transformer + "
                 f"{self.conditioning_keys} conditioning tensors",
                 f"  conditioning: {self.conditioning}"]
        if self.chosen_entry:
            lines.append(f"  weights taken from the checkpoint's {self.chosen_entry!r} entry")
        if self.filled_from_base:
            lines.append(f"  {len(self.filled_from_base)} tensors the checkpoint lacks came from the base model: "
                         f"{_listing(self.filled_from_base)}")
        if self.dropped:
            lines.append(f"  dropped on request: {_listing(self.dropped)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _listing(keys, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# Reading minWM's files
# ---------------------------------------------------------------------------------------------

# Wrapper names that FSDP, activation checkpointing and torch.compile put into parameter names.
_WRAPPER_SEGMENTS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"}
# Entries of a torch.save'd training checkpoint, in the order minWM's Wan inference prefers them
# (Wan21/wan_inference.py: the EMA weights when present, else the raw generator).
_ENTRY_ORDER = ("generator_ema", "generator", "model", "state_dict", "module")


@dataclass
class _Checkpoint:
    state: dict[str, torch.Tensor]
    config: dict | None
    files: list[Path]
    chosen_entry: str | None = None
    notes: list[str] = field(default_factory=list)


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # torch raises many types for damaged or foreign files
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint of tensors ({type(err).__name__}: {err}); "
                              f"only tensors are read (weights_only=True), never arbitrary pickled objects") from err
    if not isinstance(data, dict) or not data:
        raise ConversionError(f"{path} holds a {type(data).__name__}, expected a dict of tensors (a state dict or "
                              f"minWM's {{'generator_ema' or 'generator': state dict}})")
    if all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    for entry in _ENTRY_ORDER:
        if isinstance(data.get(entry), dict):
            state = data[entry]
            bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise ConversionError(f"{path}: entry {entry!r} holds non-tensor values at {_listing(bad)}")
            return state, entry
    raise ConversionError(f"{path} is a dict without tensors or a known entry: top-level keys "
                          f"{_listing(sorted(data))}; expected one of {list(_ENTRY_ORDER)}")


def _read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if key in state:
                        raise ConversionError(f"{path}: tensor {key!r} appears in more than one shard")
                    state[key] = handle.get_tensor(key)
        except (safetensors.SafetensorError, OSError) as err:
            raise ConversionError(f"{path} is not a readable safetensors file, it may be truncated ({err})") from err
    return state


def _shards(index: Path) -> list[Path]:
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConversionError(f"{index} is not a valid safetensors index ({err})") from err
    files = [index.parent / n for n in names]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} is listed in {index} but does not exist")
    return files


def _weights_in_folder(folder: Path) -> list[Path] | None:
    for sub in (folder, folder / "transformer"):
        single = sub / "diffusion_pytorch_model.safetensors"
        index = sub / "diffusion_pytorch_model.safetensors.index.json"
        if single.is_file():
            return [single]
        if index.is_file():
            return _shards(index)
    for name in ("model.pt", "model.pth"):
        if (folder / name).is_file():
            return [folder / name]
    return None


def read_minwm_checkpoint(path: str | Path) -> _Checkpoint:
    """The tensors (and, for HunyuanVideo-1.5, the ``config.json``) of a minWM checkpoint:
    a ``model.pt`` file, a ``.safetensors`` file or index, or a folder holding either (or a
    ``transformer/`` subfolder, minWM's HunyuanVideo-1.5 training layout). Keys are returned
    without wrapper segments (FSDP, checkpointing, compile) and without a prefix every key shares
    (``model.``: minWM's Wan wrapper; ``module.``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        files = _weights_in_folder(path)
        if files is None:
            extra = ""
            if (path / "distributed_checkpoint").is_dir():
                extra = (" (distributed_checkpoint/ is a torch.distributed resume state; convert the consolidated "
                         "transformer/ of the same checkpoint-N folder)")
            raise FileNotFoundError(f"{path} holds no minWM checkpoint: expected model.pt (Wan) or config.json with "
                                    f"diffusion_pytorch_model.safetensors (HunyuanVideo-1.5), here or in "
                                    f"transformer/{extra}")
    else:
        files = [path]
    first = files[0]
    chosen = None
    if first.name.endswith(".safetensors.index.json") or first.name.endswith(".index.json"):
        files = _shards(first)
        state = _read_safetensors(files)
    elif first.suffix == ".safetensors":
        state = _read_safetensors(files)
    elif first.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        state, chosen = _read_torch(first)
    else:
        raise ConversionError(f"{first}: unknown checkpoint format {first.suffix!r}; minWM releases model.pt "
                              f"(torch.save, Wan) and diffusion_pytorch_model.safetensors (HunyuanVideo-1.5)")
    if not state:
        raise ConversionError(f"{first} holds no tensors")
    config_path = files[0].parent / "config.json"
    config = read_json(config_path) if config_path.is_file() else None
    notes = []
    state, stripped = _clean_keys(state, first)
    if stripped:
        notes.append(f"key prefix/segments removed: {', '.join(stripped)}")
    return _Checkpoint(state, config, files, chosen, notes)


def _clean_keys(state: dict[str, torch.Tensor], source: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    cleaned: dict[str, torch.Tensor] = {}
    stripped: set[str] = set()
    for key, value in state.items():
        parts = key.split(".")
        kept = [p for p in parts if p not in _WRAPPER_SEGMENTS]
        stripped.update(p for p in parts if p in _WRAPPER_SEGMENTS)
        new = ".".join(kept)
        if new in cleaned:
            raise ConversionError(f"{source}: keys {key!r} and another one both name {new!r} once wrapper segments "
                                  f"are removed")
        cleaned[new] = value
    for prefix in ("model.", "module."):
        if all(k.startswith(prefix) for k in cleaned):
            cleaned = {k[len(prefix):]: v for k, v in cleaned.items()}
            stripped.add(prefix)
    return cleaned, sorted(stripped)


def detect_family(state: dict[str, torch.Tensor]) -> str:
    """"hunyuan15" for Tencent names (``double_blocks.N``), "wan" for Wan's (``blocks.N.self_attn``)."""
    if any(k.startswith("double_blocks.") for k in state):
        return "hunyuan15"
    if any(re.match(r"blocks\.\d+\.self_attn\.", k) for k in state):
        return "wan"
    raise ConversionError(f"cannot tell the model family from the keys ({_listing(sorted(state), 4)}): neither "
                          f"Wan's blocks.N.self_attn nor HunyuanVideo-1.5's double_blocks.N; pass family=")


# ---------------------------------------------------------------------------------------------
# Key maps: minWM (original) names → diffusers / our conditioning names
# ---------------------------------------------------------------------------------------------

def _pairs(modules: dict[str, str], params=("weight", "bias")) -> dict[str, str]:
    return {f"{src}.{p}": f"{dst}.{p}" for src, dst in modules.items() for p in params}


# Wan: the original WanModel names (Wan21/wan/modules/model.py, causal_model.py). The original
# block calls its norms norm1 (self-attention, no weights), norm3 (before cross-attention,
# affine when cross_attn_norm) and norm2 (before the FFN, no weights); diffusers names the
# affine one norm2.
_WAN_TOP = {
    **_pairs({"patch_embedding": "patch_embedding",
              "text_embedding.0": "condition_embedder.text_embedder.linear_1",
              "text_embedding.2": "condition_embedder.text_embedder.linear_2",
              "time_embedding.0": "condition_embedder.time_embedder.linear_1",
              "time_embedding.2": "condition_embedder.time_embedder.linear_2",
              "time_projection.1": "condition_embedder.time_proj",
              "head.head": "proj_out"}),
    "head.modulation": "scale_shift_table",
}
_WAN_BLOCK = {
    **_pairs({"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
              "self_attn.o": "attn1.to_out.0",
              "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
              "cross_attn.o": "attn2.to_out.0",
              "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}),
    **_pairs({"self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
              "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k"}, ("weight",)),
    "modulation": "scale_shift_table",
}

# HunyuanVideo-1.5: Tencent's names (HY15/trainer/models/hyvideo/transformer/*) → diffusers'.
_HY_TOP = _pairs({
    "img_in.proj": "x_embedder.proj",
    "time_in.mlp.0": "time_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_embed.timestep_embedder.linear_2",
    "time_r_in.mlp.0": "time_embed.timestep_embedder_r.linear_1",
    "time_r_in.mlp.2": "time_embed.timestep_embedder_r.linear_2",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "byt5_in.layernorm": "context_embedder_2.norm",
    "byt5_in.fc1": "context_embedder_2.linear_1",
    "byt5_in.fc2": "context_embedder_2.linear_2",
    "byt5_in.fc3": "context_embedder_2.linear_3",
    "vision_in.proj.0": "image_embedder.norm_in",
    "vision_in.proj.1": "image_embedder.linear_1",
    "vision_in.proj.3": "image_embedder.linear_2",
    "vision_in.proj.4": "image_embedder.norm_out",
    "final_layer.linear": "proj_out",
})
_HY_TOP["cond_type_embedding.weight"] = "cond_type_embed.weight"
_HY_REFINER = _pairs({"norm1": "norm1", "norm2": "norm2", "self_attn_proj": "attn.to_out.0",
                      "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2", "adaLN_modulation.1": "norm_out.linear"})
_HY_BLOCK = {
    **_pairs({"img_mod.linear": "norm1.linear", "txt_mod.linear": "norm1_context.linear",
              "img_attn_q": "attn.to_q", "img_attn_k": "attn.to_k", "img_attn_v": "attn.to_v",
              "img_attn_proj": "attn.to_out.0",
              "txt_attn_q": "attn.add_q_proj", "txt_attn_k": "attn.add_k_proj", "txt_attn_v": "attn.add_v_proj",
              "txt_attn_proj": "attn.to_add_out",
              "img_mlp.fc1": "ff.net.0.proj", "img_mlp.fc2": "ff.net.2",
              "txt_mlp.fc1": "ff_context.net.0.proj", "txt_mlp.fc2": "ff_context.net.2"}),
    **_pairs({"img_attn_q_norm": "attn.norm_q", "img_attn_k_norm": "attn.norm_k",
              "txt_attn_q_norm": "attn.norm_added_q", "txt_attn_k_norm": "attn.norm_added_k"}, ("weight",)),
}


@dataclass
class _Mapped:
    transformer: dict[str, torch.Tensor] = field(default_factory=dict)
    conditioning: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # our key → the minWM key(s) it came from
    unmapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    action_in: dict[str, torch.Tensor] = field(default_factory=dict)

    def put(self, part: str, key: str, value: torch.Tensor, source: str) -> None:
        getattr(self, part)[key] = value
        self.origin[f"{part}:{key}"] = source


def map_wan(state: dict[str, torch.Tensor]) -> _Mapped:
    """minWM's Wan keys → diffusers ``WanTransformer3DModel`` keys and ``prope_out.N``."""
    out = _Mapped()
    for key, value in state.items():
        if key in _WAN_TOP:
            out.put("transformer", _WAN_TOP[key], value, key)
            continue
        match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if match:
            index, rest = match.groups()
            if rest in _WAN_BLOCK:
                out.put("transformer", f"blocks.{index}.{_WAN_BLOCK[rest]}", value, key)
                continue
            if rest in ("self_attn.prope_o.weight", "self_attn.prope_o.bias"):
                out.put("conditioning", f"prope_out.{index}.{rest.rsplit('.', 1)[1]}", value, key)
                continue
        out.unmapped.append(key)
    return out


def _swap_halves(value: torch.Tensor) -> torch.Tensor:
    """Tencent's final layer emits (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift)."""
    first, second = value.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def map_hunyuan15(state: dict[str, torch.Tensor], action_in: str = "map") -> _Mapped:
    """minWM's HunyuanVideo-1.5 keys (Tencent names) → diffusers
    ``HunyuanVideo15Transformer3DModel`` keys, ``prope_out.N`` and (collected apart) ``action_in``."""
    out = _Mapped()
    for key, value in state.items():
        if key in _HY_TOP:
            out.put("transformer", _HY_TOP[key], value, key)
            continue
        if key in ("final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"):
            out.put("transformer", f"norm_out.linear.{key.rsplit('.', 1)[1]}", _swap_halves(value), key)
            continue
        if key.startswith("action_in."):
            if action_in == "drop":
                out.dropped.append(key)
            else:
                out.action_in[key] = value
            continue
        match = re.fullmatch(r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.(.+)", key)
        if match:
            index, rest = match.groups()
            prefix = f"context_embedder.token_refiner.refiner_blocks.{index}."
            if rest in _HY_REFINER:
                out.put("transformer", prefix + _HY_REFINER[rest], value, key)
                continue
            if rest in ("self_attn_qkv.weight", "self_attn_qkv.bias"):
                param = rest.rsplit(".", 1)[1]
                if value.shape[0] % 3:
                    raise ConversionError(f"{key}: a fused q/k/v projection needs a first dimension divisible by 3, "
                                          f"got shape {tuple(value.shape)}")
                # The fused output is [q | k | v], each all heads wide (the refiner splits K outermost).
                for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                    out.put("transformer", f"{prefix}attn.{name}.{param}", part.clone(), key)
                continue
        match = re.fullmatch(r"double_blocks\.(\d+)\.(.+)", key)
        if match:
            index, rest = match.groups()
            if rest in _HY_BLOCK:
                out.put("transformer", f"transformer_blocks.{index}.{_HY_BLOCK[rest]}", value, key)
                continue
            if rest in ("img_attn_prope_proj.weight", "img_attn_prope_proj.bias"):
                out.put("conditioning", f"prope_out.{index}.{rest.rsplit('.', 1)[1]}", value, key)
                continue
        out.unmapped.append(key)
    return out


# ---------------------------------------------------------------------------------------------
# minWM's discrete action embedding → our action MLP
# ---------------------------------------------------------------------------------------------

def minwm_action_spec(classes: int = MINWM_ACTION_CLASSES) -> ActionSpec:
    """The action space of a converted ``action_in``: one integer label per latent frame."""
    return ActionSpec(names=("minwm_action",), low=(0,), high=(classes - 1,), discrete=True,
                      description="minWM/WorldPlay discrete action label: 9 x translation class + rotation class "
                                  "(0 = no motion)")


def minwm_label_features(labels: torch.Tensor, width: int = _ACTION_FREQUENCIES,
                         max_period: float = _ACTION_MAX_PERIOD) -> torch.Tensor:
    """(N,) integer labels → (N, width) float32: the cos/sin embedding minWM's ``action_in``
    (a timestep embedder) feeds its first linear layer, computed as it does in float32."""
    half = width // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    angles = labels.reshape(-1, 1).float() * frequencies[None]
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if width % 2:
        features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
    return features


def action_in_to_mlp(action_in: dict[str, torch.Tensor],
                     classes: int = MINWM_ACTION_CLASSES) -> dict[str, torch.Tensor]:
    """minWM's ``action_in`` (sinusoid(label) → Linear → SiLU → Linear) as our action MLP
    (one_hot(label) → Linear → SiLU → Linear): over a finite label set the first layer of a
    fixed embedding is a table, so column k of our first weight is ``W1 · sinusoid(k) + b1``
    (bias 0) and the second layer is copied. Exact up to the float32 rounding of that column."""
    names = ("action_in.mlp.0.weight", "action_in.mlp.0.bias", "action_in.mlp.2.weight", "action_in.mlp.2.bias")
    missing = [n for n in names if n not in action_in]
    extra = sorted(set(action_in) - set(names))
    if missing or extra:
        raise ConversionError(f"minWM's action_in is mlp.0 and mlp.2 (weight, bias): "
                              + "; ".join(filter(None, [f"missing {missing}" if missing else "",
                                                        f"unknown {extra}" if extra else ""])))
    w1, b1, w2, b2 = (action_in[n] for n in names)
    if w1.ndim != 2 or b1.shape != (w1.shape[0],) or w2.ndim != 2 or w2.shape[1] != w1.shape[0] \
            or b2.shape != (w2.shape[0],):
        raise ConversionError(f"action_in shapes do not chain: mlp.0 {tuple(w1.shape)} + {tuple(b1.shape)}, "
                              f"mlp.2 {tuple(w2.shape)} + {tuple(b2.shape)}")
    features = minwm_label_features(torch.arange(classes), width=w1.shape[1]).double()  # (classes, width)
    table = features @ w1.double().T + b1.double()  # (classes, hidden): what mlp.0 gives each label
    return {"action_mlp.0.weight": table.T.contiguous().float(), "action_mlp.0.bias": torch.zeros(w1.shape[0]),
            "action_mlp.2.weight": w2.float().clone(), "action_mlp.2.bias": b2.float().clone()}


# ---------------------------------------------------------------------------------------------
# Architecture configs
# ---------------------------------------------------------------------------------------------

# The constructor defaults of minWM's ARHunyuanVideo_1_5_DiffusionTransformer (a config.json
# written by minWM lists every one of them; a missing key takes its default, as from_config does).
_MINWM_HY15_DEFAULTS = dict(
    patch_size=[1, 2, 2], in_channels=4, concat_condition=True, out_channels=None, hidden_size=3072, heads_num=24,
    mlp_width_ratio=4.0, mlp_act_type="gelu_tanh", mm_double_blocks_depth=20, mm_single_blocks_depth=40,
    rope_dim_list=[16, 56, 56], qkv_bias=True, qk_norm=True, qk_norm_type="rms", guidance_embed=False,
    use_meanflow=False, text_projection="single_refiner", use_attention_mask=True, text_states_dim=4096,
    text_states_dim_2=768, text_pool_type=None, rope_theta=256, attn_mode="flash", attn_param=None,
    glyph_byT5_v2=False, vision_projection="none", vision_states_dim=1280, is_reshape_temporal_channels=False,
    use_cond_type_embedding=False, ideal_resolution=None, ideal_task=None)
_MINWM_HY15_REFINER_DEPTH = 2  # minWM builds its token refiner with depth=2 whatever the config says
_MINWM_HY15_BYT5_WIDTH = 1472  # ByT5Mapper(in_dim=1472, ...) is fixed in minWM's constructor
_TARGET_SIZE = {"480p": 640, "720p": 960}


def hunyuan15_config_from_minwm(config: dict, state: dict[str, torch.Tensor] | None = None) -> tuple[dict, list[str]]:
    """A minWM/Tencent HunyuanVideo-1.5 ``config.json`` → diffusers'
    ``HunyuanVideo15Transformer3DModel`` config, and notes on what was assumed."""
    values = {**_MINWM_HY15_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    notes = []
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _MINWM_HY15_DEFAULTS)
    if unknown:
        notes.append(f"config keys minWM's model class does not take (ignored, as from_config does): {unknown}")
    problems = []
    if values["mm_single_blocks_depth"]:
        problems.append(f"mm_single_blocks_depth={values['mm_single_blocks_depth']} (HunyuanVideo-1.5 has none)")
    if values["text_projection"] != "single_refiner":
        problems.append(f"text_projection={values['text_projection']!r} (diffusers has the single refiner only)")
    if values["text_pool_type"] is not None:
        problems.append(f"text_pool_type={values['text_pool_type']!r} (no pooled-text embedder in diffusers)")
    if values["mlp_act_type"] != "gelu_tanh":
        problems.append(f"mlp_act_type={values['mlp_act_type']!r} (diffusers uses gelu_tanh)")
    if not values["qk_norm"] or values["qk_norm_type"] != "rms":
        problems.append(f"qk_norm={values['qk_norm']}, qk_norm_type={values['qk_norm_type']!r} (diffusers: RMS)")
    if not values["qkv_bias"]:
        problems.append("qkv_bias=False (diffusers' projections have biases)")
    patch = values["patch_size"]
    patch = [patch] * 3 if isinstance(patch, int) else list(patch)
    if len(patch) == 2:
        patch = [1, *patch]
    if len(patch) != 3 or patch[1] != patch[2]:
        problems.append(f"patch_size={values['patch_size']} (diffusers needs square spatial patches)")
    hidden, heads = int(values["hidden_size"]), int(values["heads_num"])
    if hidden % heads:
        problems.append(f"hidden_size {hidden} is not divisible by heads_num {heads}")
    if problems:
        raise ConversionError("this HunyuanVideo-1.5 config has no diffusers counterpart: " + "; ".join(problems))
    latent = int(values["in_channels"])
    out_channels = int(values["out_channels"] or latent)
    if values["concat_condition"]:
        in_channels = latent + latent // 2 + 1 if values["is_reshape_temporal_channels"] else 2 * latent + 1
    else:
        in_channels = latent
    byt5 = _MINWM_HY15_BYT5_WIDTH
    if state is not None and "byt5_in.layernorm.weight" in state:
        byt5 = int(state["byt5_in.layernorm.weight"].shape[0])
    resolution = values["ideal_resolution"]
    if values["ideal_task"] not in (None, "i2v"):
        notes.append(f"ideal_task={values['ideal_task']!r}; minWM runs every HunyuanVideo-1.5 world model "
                     f"image-to-video (mask_type='i2v'), so task_type='i2v'")
    converted = dict(
        in_channels=in_channels, out_channels=out_channels, num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        num_layers=int(values["mm_double_blocks_depth"]), num_refiner_layers=_MINWM_HY15_REFINER_DEPTH,
        mlp_ratio=float(values["mlp_width_ratio"]), patch_size=int(patch[1]), patch_size_t=int(patch[0]),
        qk_norm="rms_norm", text_embed_dim=int(values["text_states_dim"]), text_embed_2_dim=byt5,
        image_embed_dim=int(values["vision_states_dim"]), rope_theta=float(values["rope_theta"]),
        rope_axes_dim=tuple(int(d) for d in values["rope_dim_list"]), target_size=_TARGET_SIZE.get(resolution, 640),
        task_type="i2v", use_meanflow=bool(values["use_meanflow"]))
    return converted, notes


def _transformer_config_of(folder: Path) -> dict | None:
    path = folder / "transformer" / "config.json"
    return read_json(path) if path.is_file() else None


@dataclass
class _Base:
    codec: object
    config: dict | None  # the diffusers transformer config, when the base has one
    weights: Path | None  # the base's transformer/ folder (diffusers names), to fill missing tensors
    name: str


def _open_base(base: str | Path | None, family: str) -> _Base:
    if base is None:
        raise ConversionError("minWM's checkpoints hold the transformer only: pass base=, the base model folder "
                              "(diffusers format: Wan2.1-T2V-1.3B-Diffusers, or HunyuanVideo-1.5-Diffusers 480p_i2v) "
                              "whose vae/ becomes the codec")
    folder = Path(base)
    if not folder.is_dir():
        raise FileNotFoundError(f"base {str(base)!r} is not an existing folder (a diffusers-format model folder with "
                                f"vae/, or any minwm model folder)")
    config = _transformer_config_of(folder)
    base_family = backbone_family(folder / "transformer") if config is not None else None
    if base_family is not None and base_family != family:
        raise ConversionError(f"the checkpoint is a {family} model but the base {folder} holds a {base_family} "
                              f"transformer ({config.get('_class_name')})")
    try:
        codec = load_codec(folder)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"base {folder} has no codec (vae/ or codec.json): {err}") from err
    weights = folder / "transformer" if config is not None else None
    return _Base(codec, config, weights, str(folder))


def _base_tensors(base: _Base, keys: list[str]) -> dict[str, torch.Tensor]:
    if base.weights is None:
        return {}
    files = _weights_in_folder(base.weights)
    if not files or files[0].suffix != ".safetensors":
        return {}
    found: dict[str, torch.Tensor] = {}
    wanted = set(keys)
    for path in files:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key in wanted:
                    found[key] = handle.get_tensor(key)
    return found


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ConversionError(f"dtype must be one of {sorted(names)} or None (keep the checkpoint's), got {dtype!r}")
    return names[dtype]


def _check_against(part: str, mapped: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                   origin: dict[str, str], what: str) -> tuple[list[str], list[str]]:
    """(missing keys, problems): unexpected keys and shape mismatches are problems."""
    problems = []
    unexpected = sorted(set(mapped) - set(expected))
    if unexpected:
        problems.append(f"{what}: keys the architecture does not have: "
                        + _listing([f"{origin.get(f'{part}:{k}', '?')} -> {k}" for k in unexpected]))
    for key in sorted(set(mapped) & set(expected)):
        if tuple(mapped[key].shape) != tuple(expected[key].shape):
            problems.append(f"{what}: shape mismatch at {origin.get(f'{part}:{key}', '?')} -> {key}: checkpoint "
                            f"{tuple(mapped[key].shape)} vs architecture {tuple(expected[key].shape)}")
    return sorted(set(expected) - set(mapped)), problems


def _block_count(keys, pattern: str) -> int:
    indices = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def convert_minwm(checkpoint_path: str | Path, out_folder: str | Path, *, family: str | None = None,
                  base: str | Path | None = None, action_in: str = "map", fill_from_base: bool = False,
                  dtype: str | torch.dtype | None = None, settings: dict | None = None,
                  overwrite: bool = False) -> ConversionReport:
    """Convert a minWM world-model checkpoint into a minwm model folder (see the module docstring).

    checkpoint_path: minWM's ``model.pt`` (Wan) or its transformer folder / safetensors
    (HunyuanVideo-1.5). family: "wan" or "hunyuan15" (default: told by the keys). base: the
    base model folder in diffusers format (Wan2.1-T2V-1.3B-Diffusers, HunyuanVideo-1.5-Diffusers
    480p_i2v) or any minwm model folder: its ``vae/`` is the codec, its transformer config the
    Wan architecture (minWM's Wan checkpoint has no config), and with ``fill_from_base`` its
    weights fill tensors the checkpoint lacks (listed in the report).
    action_in: "map" (minWM's discrete action embedder becomes our action MLP exactly, 81 labels)
    or "drop" (as minWM's own inference does without --use_discrete_action; recorded).
    dtype: cast the weights (default: keep the checkpoint's). settings: overrides of the
    ``minwm.json`` settings (default: minWM's inference settings, :data:`MINWM_SETTINGS`).

    Raises FileNotFoundError for missing files and :class:`ConversionError` (a ValueError) for
    an unknown format, keys with no counterpart, missing keys and shape mismatches, each named.
    """
    out = Path(out_folder)
    if action_in not in ACTION_IN_MODES:
        raise ConversionError(f"action_in must be one of {ACTION_IN_MODES}, got {action_in!r}")
    if family is not None and family not in FAMILIES:
        raise ConversionError(f"family must be one of {FAMILIES}, got {family!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConversionError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    cast = _resolve_dtype(dtype)
    if base is None:
        _open_base(None, family or "wan")  # raises: say so before reading a large checkpoint

    checkpoint = read_minwm_checkpoint(checkpoint_path)
    state = checkpoint.state
    try:
        detected = detect_family(state)
    except ConversionError:
        if family is None:
            raise
        detected = family  # its key map will name every key it cannot place
    if family is not None and family != detected:
        raise ConversionError(f"family={family!r} was asked for, but the checkpoint's keys are {detected}'s "
                              f"({_listing(sorted(state), 3)})")
    notes = list(checkpoint.notes)
    mapped = map_wan(state) if detected == "wan" else map_hunyuan15(state, action_in)
    if mapped.unmapped:
        raise ConversionError(f"{len(mapped.unmapped)} checkpoint keys have no counterpart in minwm's {detected} "
                              f"model (nothing is dropped silently): {_listing(sorted(mapped.unmapped), 12)}")
    base_info = _open_base(base, detected)

    # -- the transformer's architecture --------------------------------------------------------
    if detected == "wan":
        if base_info.config is None:
            raise ConversionError(f"minWM's Wan checkpoint has no config: the base ({base_info.name}) must hold "
                                  f"transformer/config.json (diffusers' WanTransformer3DModel)")
        config = {k: v for k, v in base_info.config.items() if not k.startswith("_")}
        layers = _block_count(state, r"blocks\.(\d+)\.")
        if layers != config.get("num_layers"):
            raise ConversionError(f"the checkpoint has {layers} blocks, the base config ({base_info.name}) "
                                  f"num_layers={config.get('num_layers')}: they are different models")
    else:
        if checkpoint.config is not None:
            config, config_notes = hunyuan15_config_from_minwm(checkpoint.config, state)
            notes += config_notes
        elif base_info.config is not None:
            config = {k: v for k, v in base_info.config.items() if not k.startswith("_")}
            notes.append(f"the checkpoint has no config.json: the architecture is the base's ({base_info.name})")
        else:
            raise ConversionError(f"{checkpoint.files[0]} has no config.json beside it and the base has no transformer "
                                  f"config: the HunyuanVideo-1.5 architecture is unknown")
        layers = _block_count(state, r"double_blocks\.(\d+)\.")
        if layers != config["num_layers"]:
            raise ConversionError(f"the checkpoint has {layers} double_blocks, its config says "
                                  f"{config['num_layers']}")
    transformer_class, backbone_class = BACKBONES[detected]
    try:
        with torch.device("meta"):  # no memory for weights: the checkpoint's tensors are assigned below
            transformer = transformer_class.from_config(config)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"not a valid {transformer_class.__name__} config ({err}): {config}") from err

    # -- conditioning branches -----------------------------------------------------------------
    prope_layers = sorted({int(k.split(".")[1]) for k in mapped.conditioning if k.startswith("prope_out.")})
    if prope_layers and prope_layers != list(range(layers)):
        raise ConversionError(f"PRoPE projections exist for blocks {prope_layers} only; minWM adds one to every "
                              f"block (0..{layers - 1})")
    action_spec, hidden = None, 256
    if mapped.action_in:
        mapped.conditioning.update(action_in_to_mlp(mapped.action_in))
        for key in mapped.conditioning:
            if key.startswith("action_mlp."):
                mapped.origin[f"conditioning:{key}"] = "action_in.mlp.*"
        action_spec, hidden = minwm_action_spec(), int(mapped.action_in["action_in.mlp.0.weight"].shape[0])
    conditioning = ConditioningConfig(camera="prope" if prope_layers else "none", action_spec=action_spec,
                                      action_hidden_dim=hidden)

    # -- check every tensor against the architecture, fill from the base if asked -------------------
    expected = transformer.state_dict()
    missing, problems = _check_against("transformer", mapped.transformer, expected, mapped.origin, "transformer")
    filled: list[str] = []
    if missing and fill_from_base:
        found = _base_tensors(base_info, missing)
        for key, value in found.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                problems.append(f"base {base_info.name}: {key} has shape {tuple(value.shape)}, the architecture "
                                f"{tuple(expected[key].shape)}")
                continue
            reference = next(iter(mapped.transformer.values()))
            mapped.transformer[key] = value.to(reference.dtype)
            filled.append(key)
        missing = sorted(set(missing) - set(filled))
    if missing:
        hint = "" if fill_from_base else " (fill_from_base=True / --fill-from-base takes them from the base model)"
        problems.append(f"transformer: {len(missing)} tensors the architecture needs are not in the checkpoint"
                        f"{hint}: {_listing(missing)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = backbone_class(transformer, MINWM_SETTINGS[detected]["prediction_type"], conditioning)
    if backbone.conditioning is not None:
        cond_missing, cond_problems = _check_against("conditioning", mapped.conditioning,
                                                     backbone.conditioning.state_dict(), mapped.origin, "conditioning")
        problems += cond_problems
        if cond_missing:
            problems.append(f"conditioning: missing {_listing(cond_missing)}")
    if problems:
        raise ConversionError(f"{checkpoint.files[0]} does not convert exactly:\n  " + "\n  ".join(problems))

    # -- assemble and write ---------------------------------------------------------------------
    tensors = mapped.transformer if cast is None else {k: v.to(cast) for k, v in mapped.transformer.items()}
    transformer.load_state_dict(tensors, strict=True, assign=True)
    if backbone.conditioning is not None:
        backbone.conditioning.load_state_dict({k: v.float() for k, v in mapped.conditioning.items()}, strict=True)
    values = dict(MINWM_SETTINGS[detected])
    values.update(settings or {})
    model_settings = ModelSettings.from_dict(dict(values), "settings")
    model = WorldModel(backbone, base_info.codec, model_settings)

    staging = out.parent / f".{out.name}.converting"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        model.save_pretrained(staging)
        notes += _link_text_parts(Path(base), staging)
        report = ConversionReport(
            family=detected, source=str(Path(checkpoint_path)), out=str(out), checkpoint_keys=len(state),
            transformer_keys=len(mapped.transformer), conditioning_keys=len(mapped.conditioning),
            conditioning=conditioning.to_dict(), settings={k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in values.items()},
            chosen_entry=checkpoint.chosen_entry, filled_from_base=filled, dropped=sorted(mapped.dropped), notes=notes)
        provenance = {"converted_from": "minWM (github.com/shengshu-ai/minWM)", **report.__dict__,
                      "base": base_info.name, "minwm_inference": _MINWM_INFERENCE_NOTES[detected],
                      "dtype": str(next(iter(tensors.values())).dtype)}
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return report


TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def _link_text_parts(base: Path, out: Path) -> list[str]:
    """Symlink the base folder's text encoders and tokenizers into the converted folder (they are
    the base's, unchanged, and several GB: linked, not copied), so string prompts work with it
    (minwm_env/text.py). Returns notes for the report."""
    linked = []
    for name in TEXT_PARTS:
        if (base / name).is_dir() and not (out / name).exists():
            (out / name).symlink_to((base / name).resolve(), target_is_directory=True)
            linked.append(name)
    return [f"linked the base's {', '.join(linked)} (string prompts; move the base and the links break)"] if linked else []


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minwm_env.convert",
        description="Convert a minWM world-model checkpoint (Wan2.1 model.pt, or a HunyuanVideo-1.5 transformer "
                    "folder) into a minwm model folder that load_model and gym.make('minwm/World-v0', model=...) "
                    "read. See docs/convert.md.")
    parser.add_argument("checkpoint",
                        help="minWM's model.pt (Wan) or transformer folder / safetensors (HunyuanVideo-1.5)")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--family", choices=FAMILIES, help="the backbone family (default: told by the keys)")
    parser.add_argument("--base", help="the base model folder in diffusers format (its vae/ is the codec; for Wan also "
                                       "the transformer config)")
    parser.add_argument("--action-in", choices=ACTION_IN_MODES, default="map",
                        help="minWM's discrete action_in: map it onto the action MLP (default) or drop it")
    parser.add_argument("--fill-from-base", action="store_true",
                        help="take transformer tensors the checkpoint lacks from the base model (listed)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="cast the weights (default: keep the checkpoint's)")
    parser.add_argument("--height", type=int, help="frame height in minwm.json (default: minWM's 480)")
    parser.add_argument("--width", type=int, help="frame width in minwm.json (default: minWM's 832)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    parser.add_argument("--verify", action="store_true", help="load the written folder back with load_model")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}
    try:
        report = convert_minwm(args.checkpoint, args.out, family=args.family, base=args.base,
                               action_in=args.action_in, fill_from_base=args.fill_from_base, dtype=args.dtype,
                               settings=overrides, overwrite=args.overwrite)
        if args.verify:
            from .models import load_model
            load_model(args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.verify:
        print("  verified: load_model reads it back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
