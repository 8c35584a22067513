"""Training configuration: one typed dataclass for every stage, presets, saved beside checkpoints.

Fields are grouped: the run (what to load, where to write), optimisation (shared by all
stages), then each stage's own settings (``ode_*``, ``cd_*``, ``dmd_*``). Presets hold the
paper's per-stage recipes (docs/design.md §7); the command line overrides any field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from minwm_env.cli import arg
from minwm_env.jsonfile import read_json

STAGES = ("stage0", "stage1", "stage2a", "stage2b", "stage2c", "stage3")
TRAIN_ONLY = ("all", "conditioning")


@dataclass(frozen=True)
class TrainConfig:
    """Train one stage of the minwm pipeline."""

    # -- the run -------------------------------------------------------------------------------
    stage: str = arg("stage0", "stage to train", choices=list(STAGES))
    preset: str = arg("tiny", "training preset whose settings fill the defaults")
    model: str = arg("tiny", "model to start from: a preset name or the previous stage's model folder")
    teacher: str | None = arg(None, "stage2a/2b: the AR teacher (stage-1 model); stage3: the bidirectional "
                                    "real score (stage-0 model)")
    depth_model: str | None = arg(None, "a depth net folder (python -m minwm_train.depth) for a model preset whose "
                                        "warp reprojects through predicted depth; model folders carry their own")
    fill_model: str | None = arg(None, "a fill net folder (python -m minwm_train.fill) for a model preset whose warp "
                                       "fill is 'net'; model folders carry their own")
    data: str = arg("", "dataset folder (minwm-data render/ingest, then encode) or its latents/ subfolder")
    out: str = arg("runs/stage", "output folder: checkpoints/, model/, metrics.jsonl, config.json")
    camera: str = arg("none", "camera branch added if the model has none: none, prope, plucker")
    actions: str = arg("none", "action branch added if the model has none: none, camera (camera deltas), another "
                               "named space (diff-drive, pusher-arm) or a spec file (JSON; docs/robots.md)")
    train_only: str = arg("all", "what the stage trains: all (every weight of the model) or conditioning (only the "
                                 "camera/action branches, on the frozen backbone)", choices=list(TRAIN_ONLY))
    new_branches: bool = arg(False, "a model whose branches differ from --camera/--actions gets new zero-initialised "
                                    "ones (its old branches dropped) instead of an error: a new robot's action "
                                    "space on a trained backbone")
    prediction_type: str = arg("v", "what a new model predicts: v or x0 (kept from a loaded model)")
    # -- optimisation --------------------------------------------------------------------------
    steps: int = arg(20, "optimiser steps")
    batch_size: int = arg(2, "clips per micro-batch")
    grad_accum: int = arg(1, "micro-batches per optimiser step")
    lr: float = arg(1e-4, "learning rate")
    betas: tuple[float, float] = arg((0.9, 0.999), "Adam betas")
    weight_decay: float = arg(0.0, "AdamW weight decay")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0: off)")
    mixed_precision: str = arg("no", "autocast precision (fp16 adds a loss scaler)", choices=["no", "fp16", "bf16"])
    gradient_checkpointing: bool = arg(False, "recompute blocks in the backward pass")
    fsdp: bool = arg(False, "several processes: shard the trained models' blocks (FSDP2), their gradients and "
                            "optimiser state")
    ema_decay: float = arg(0.0, "EMA decay of the trained model (0: no EMA)")
    ema_start: int = arg(0, "the step whose weights start the EMA (updated from the next step on)")
    checkpoint_every: int = arg(10, "write a checkpoint every this many steps")
    keep_checkpoints: int = arg(2, "checkpoints kept on disk")
    log_every: int = arg(1, "write metrics every this many steps")
    seed: int = arg(0, "seed of data order, noise and timesteps")
    num_latent_frames: int | None = arg(None, "crop clips to this many latent frames (1 + chunks)")
    chunk_frames: int = arg(4, "latent frames per autoregressive chunk")
    shift: float = arg(5.0, "timestep shift for training sigmas and samplers")
    tensorboard: bool = arg(False, "also log to TensorBoard (needs tensorboard installed)")
    unseen_weight: float = arg(1.0, "weight of the squared error on pixels the warped reference never saw (a "
                                    "warp_validity model; 1: every pixel alike)")
    # -- stage 2: the few-step student ---------------------------------------------------------
    student_timesteps: tuple[float, ...] = arg((1000.0, 750.0, 500.0, 250.0), "few-step schedule before shifting")
    # -- stage 2a: causal ODE distillation -----------------------------------------------------
    ode_teacher_steps: int = arg(48, "Euler steps of the teacher's ODE")
    ode_guidance: float = arg(6.0, "teacher CFG when generating ODE pairs")
    ode_num_clips: int = arg(8, "clips for which ODE pairs are generated")
    # -- stage 2b: causal consistency distillation ---------------------------------------------
    cd_grid_steps: int = arg(50, "steps of the consistency grid")
    cd_guidance: float = arg(3.0, "teacher CFG of the one-step Euler target")
    cd_target_ema: float = arg(0.99, "EMA decay of the target student")
    # -- stage 2c: self-rollout fine-tuning -----------------------------------------------------
    rollout_context_chunks: int = arg(1, "stage2c: at most this many chunks (drawn per step "
                                                                "from 1..N) the model streams itself before the chunk it learns")
    rollout_clean_fraction: float = arg(0.25, "stage2c: fraction of clips that keep the ground-truth context")
    rollout_memory_frames: int = arg(0, "stage2c: the rollout keeps a view memory of this many frames and the learned "
                                        "chunk's reference is filled from it, as the env streams with memory (0: off)")
    # -- stage 3: asymmetric DMD ---------------------------------------------------------------
    dmd_critic_updates: int = arg(5, "fake-score (critic) updates per generator update")
    dmd_real_guidance: float = arg(4.0, "CFG of the frozen real score")
    dmd_critic_lr: float | None = arg(None, "critic learning rate (default: lr)")
    dmd_min_timestep: float = arg(20.0, "critic timesteps are drawn from [min, max], then shifted")
    dmd_max_timestep: float = arg(980.0, "upper end of the critic timesteps")
    dmd_rollout_chunks: int = arg(2, "chunks the generator rolls out on its own cache")

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.train_only not in TRAIN_ONLY:
            raise ValueError(f"train_only must be one of {TRAIN_ONLY}, got {self.train_only!r}")
        if self.rollout_memory_frames < 0:
            raise ValueError(f"rollout_memory_frames must be >= 0, got {self.rollout_memory_frames}")
        if not self.unseen_weight > 0:
            raise ValueError(f"unseen_weight must be positive, got {self.unseen_weight}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "chunk_frames", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown config keys {unknown}")
        values = {}
        for name, value in data.items():
            default = known[name].default
            if isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            if default is not None and value is not None and not isinstance(value, type(default)) and not (
                    isinstance(default, float) and isinstance(value, int)):
                raise ValueError(f"{source}: {name} must be {type(default).__name__}, got {value!r}")
            values[name] = value
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_json(path), str(path))


# minwm-default v2 (issue 18): the default recipe on the default-v2 networks (the warped
# reference and its validity as inputs), then stage 3: DMD against the stage-0 bidirectional
# model on the student's own rollouts, because a regression target (stages 1-2c) can only draw
# the mean of what comes into view.
_V2_ALL = dict(model="default-v2", batch_size=8, lr=3e-4, prediction_type="x0", camera="none", actions="camera",
               num_latent_frames=5, chunk_frames=4, checkpoint_every=100, keep_checkpoints=1, log_every=10,
               ema_decay=0.998, ema_start=200, ode_teacher_steps=16, ode_guidance=1.0, ode_num_clips=256,
               cd_guidance=1.0, dmd_real_guidance=1.0, dmd_rollout_chunks=1)
_V2_STAGES = {
    # shorter than the default recipe's stages (its one-chunk losses were flat after about half
    # of each) so that a whole first pass fits one 3-hour session on 2 cores
    "stage0": dict(steps=1200), "stage1": dict(steps=800), "stage2a": dict(steps=600), "stage2b": dict(steps=600),
    "stage2c": dict(steps=400, lr=1e-4, num_latent_frames=9, rollout_context_chunks=1, ema_decay=0.99, ema_start=100),
    # one chunk after the start frame: the clips the stage-0 real score was trained on
    "stage3": dict(steps=400, lr=1e-5, betas=(0.0, 0.999), ema_decay=0.99, ema_start=100),
}

# Per-preset, per-stage settings (docs/design.md §7; the paper's Wan2.1 and HY1.5 recipes).
PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "all": dict(model="tiny", batch_size=2, lr=1e-3, chunk_frames=2, num_latent_frames=5, checkpoint_every=5,
                    camera="prope", actions="camera", ode_teacher_steps=8, ode_num_clips=4, cd_grid_steps=8,
                    student_timesteps=(1000.0, 500.0)),
        "stage0": dict(steps=8), "stage1": dict(steps=8), "stage2a": dict(steps=8), "stage2b": dict(steps=8),
        "stage2c": dict(steps=8), "stage3": dict(steps=6, dmd_critic_updates=2, dmd_rollout_chunks=2),
    },
    # The tiny preset on HunyuanVideo-1.5's transformer (issue 20): every stage on CPU in seconds.
    "tiny-hy15": {
        "all": dict(model="tiny-hy15", batch_size=2, lr=1e-3, chunk_frames=2, num_latent_frames=5, checkpoint_every=5,
                    camera="prope", actions="camera", ode_teacher_steps=8, ode_num_clips=4, cd_grid_steps=8,
                    student_timesteps=(1000.0, 500.0)),
        "stage0": dict(steps=8), "stage1": dict(steps=8), "stage2a": dict(steps=8), "stage2b": dict(steps=8),
        "stage2c": dict(steps=8), "stage3": dict(steps=6, dmd_critic_updates=2, dmd_rollout_chunks=2),
    },
    # The shipped default world model (issue 11, docs/default_model.md): a ~1.4M-parameter Wan
    # on the space-to-depth latent of 64x64 renders. No prompts, so no CFG. Camera deltas enter
    # through the action branch only (relative, so long rollouts stay in distribution); clips of
    # 1 start frame + 1 chunk keep attention affordable on 2 cores (PRoPE and 2-chunk clips
    # measured ~7 s a step at batch 8).
    "default": {
        "all": dict(model="default", batch_size=8, lr=3e-4, prediction_type="x0", camera="none",
                    actions="camera", num_latent_frames=5, chunk_frames=4, checkpoint_every=100,
                    keep_checkpoints=1, log_every=10, ema_decay=0.998, ema_start=200, ode_teacher_steps=16,
                    ode_guidance=1.0, ode_num_clips=256, cd_guidance=1.0, dmd_real_guidance=1.0,
                    dmd_rollout_chunks=1),
        # With the warped reference (minwm_env/warp.py) the network starts at the warp's quality
        # and learns the remainder (measured: the one-chunk loss plateaus within 1000 steps), so
        # stages 0-2a are far shorter than the unwarped recipe's 6000/8000/2000. Trained on clean
        # contexts only, streaming drifted (worse than the bare warp from horizon 4), so stage 2c
        # then trains on the model's own rolled-out contexts.
        "stage0": dict(steps=2000), "stage1": dict(steps=1200), "stage2a": dict(steps=1000),
        "stage2b": dict(steps=1000),
        "stage2c": dict(steps=500, lr=1e-4, num_latent_frames=9, rollout_context_chunks=1, ema_decay=0.99,
                        ema_start=100),
        "stage3": dict(steps=600, lr=1e-5, betas=(0.0, 0.999), ema_decay=0.99,
                                                    ema_start=100),
    },
    "default-v2": {"all": _V2_ALL, **_V2_STAGES},
    # the same recipe on default-v2b (never-seen pixels streaked from the border, validity beside)
    "default-v2b": {"all": {**_V2_ALL, "model": "default-v2b"}, **_V2_STAGES},
    # the long run (issue 18, several sessions): default-v3's finer tokens, the loss weighted
    # towards never-seen pixels
    "default-v3": {"all": {**_V2_ALL, "model": "default-v3", "unseen_weight": 4.0},
                   "stage0": dict(steps=3000), "stage1": dict(steps=3000), "stage2a": dict(steps=1500),
                   "stage2b": dict(steps=1500), "stage2c": {**_V2_STAGES["stage2c"], "steps": 1000},
                   "stage3": _V2_STAGES["stage3"]},
    # v4 (issue 18): default-v2b's recipe with the warp through the model's own predicted depth
    # (minwm_env/depth.py) instead of one plane: measured on held-out paths with the truth's
    # depth, +7 dB on the pixels the start frame showed (benchmarks/depth_warp_probe.py).
    "default-v4": {"all": {**_V2_ALL, "model": "default-v4"}, **_V2_STAGES},
    # v4 with its output gated to never-seen pixels (ModelSettings.residual_gate): the same recipe
    "default-v4g": {"all": {**_V2_ALL, "model": "default-v4g"}, **_V2_STAGES},
    # v4g with the fill net in its reference (issue 18; give --depth-model and --fill-model)
    "default-v4f": {"all": {**_V2_ALL, "model": "default-v4f"}, **_V2_STAGES},
    # The arm world model (issue 22, docs/robots.md): the v2 recipe on the "arm" network with
    # the pusher arm's joint commands as actions and no camera branch (the camera never moves).
    # One fixed view, so far less to learn than v2's recipe; the first pass (stage 1 600 steps,
    # stage 2c 300) followed the actions for one step and then let the moving forearm dissolve,
    # with stage 1's loss still falling: stage 1 and 2c run longer (docs/robots.md).
    "arm": {"all": {**_V2_ALL, "model": "arm", "actions": "pusher-arm"}, **_V2_STAGES,
            "stage0": dict(steps=800), "stage1": dict(steps=2000), "stage2a": dict(steps=300),
            "stage2b": dict(steps=300), "stage2c": {**_V2_STAGES["stage2c"], "steps": 600}},
    "wan21-1.3b": {
        "all": dict(model="wan21-1.3b", batch_size=32, mixed_precision="bf16", gradient_checkpointing=True,
                    lr=2e-6, camera="prope", num_latent_frames=20, chunk_frames=4, ode_teacher_steps=48,
                    ode_guidance=6.0, cd_guidance=3.0, checkpoint_every=250),
        "stage0": dict(steps=5000), "stage1": dict(steps=4000), "stage2a": dict(steps=2000),
        "stage2b": dict(steps=2000),
        "stage3": dict(steps=200, lr=2e-6, betas=(0.0, 0.999), ema_decay=0.99, ema_start=200, dmd_real_guidance=4.0),
    },
    "hy15-8b": {  # HunyuanVideo-1.5 8.3B (minwm_env/backbones/hunyuan.py; GPU; the paper's recipe)
        "all": dict(model="hy15-8b", batch_size=32, mixed_precision="bf16", gradient_checkpointing=True, lr=1e-5,
                    camera="prope", num_latent_frames=20, chunk_frames=4, checkpoint_every=250),
        "stage0": dict(steps=8000), "stage1": dict(steps=4000), "stage2a": dict(steps=1500),
        "stage2b": dict(steps=1500),
        "stage3": dict(steps=500, lr=4e-7, betas=(0.0, 0.999), ema_decay=0.99, ema_start=200, dmd_real_guidance=4.0),
    },
}


# Models whose backbone adapter is not written yet: their presets keep the paper's recipe as
# settings only, and training one stops before any data or weights are read (none at present:
# HunyuanVideo-1.5 has its adapter since issue 20).
UNSUPPORTED_MODELS: dict[str, str] = {}


def check_supported(config: TrainConfig) -> None:
    """Raise a ValueError saying what to use instead when the config's model or teacher is one
    whose backbone minwm cannot build yet."""
    for name in (config.model, config.teacher):
        if name in UNSUPPORTED_MODELS:
            raise ValueError(UNSUPPORTED_MODELS[name])


def preset_config(preset: str, stage: str, **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; presets: {sorted(PRESETS)}")
    values = {**PRESETS[preset]["all"], **PRESETS[preset].get(stage, {}), "preset": preset, "stage": stage}
    return replace(TrainConfig(), **{**values, **overrides})
