"""What the stages share: loading and exporting models, conditions, sigmas, the stage-1 layout.

Clips are laid out as latent frame 0 (the start image: always clean, its own block) followed by
chunks of ``chunk_frames`` latent frames (docs/design.md §4).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from minwm_env import camera, flow
from minwm_env.backbones import PromptState, causal_frame_mask
from minwm_env.conditioning import ConditioningConfig, FrameConditions, check_same_space, load_action_spec
from minwm_env.models import CONDITIONING_DIR, PRESETS as MODEL_PRESETS, WorldModel, load_model
from minwm_env.streaming import guidance_prompt, padded_prompt

from ..config import TrainConfig
from ..engine import Stage


def build_model(config: TrainConfig, source: str, device: torch.device, trainable: bool = True) -> WorldModel:
    """Load ``source`` (a preset or a model folder) and add the configured branches if it has none."""
    is_preset = source in MODEL_PRESETS
    overrides = {"prediction_type": config.prediction_type} if is_preset else {}
    conditioning = None
    has_branches = not is_preset and (Path(source) / CONDITIONING_DIR).is_dir()
    wanted = load_action_spec(config.actions)
    if config.camera != "none" and wanted is not None and wanted.names != camera.DELTA_NAMES:
        raise ValueError(f"--camera {config.camera} places frames by camera poses, which needs camera-delta actions; "
                         f"--actions is {wanted.describe()}: use --camera none (a fixed camera)")
    if not has_branches and (config.camera != "none" or wanted is not None):
        conditioning = ConditioningConfig(camera=config.camera, action_spec=wanted)
    depth, fill = (config.depth_model, config.fill_model) if is_preset else (None, None)
    model = load_model(source, device=device, conditioning=conditioning, depth=depth, fill=fill, **overrides)
    if has_branches and (config.camera != "none" or wanted is not None):
        have = model.backbone.conditioning_config
        differs = have.camera != config.camera or not (wanted is None and have.action_spec is None or (
            wanted is not None and have.action_spec is not None and wanted.same_space(have.action_spec)))
        if differs and config.new_branches and trainable and source == config.model:
            model = load_model(source, device=device, conditioning=ConditioningConfig(camera=config.camera,
                                                                                     action_spec=wanted),
                               depth=depth, fill=fill)
        elif wanted is not None:
            try:
                check_same_space(wanted, have.action_spec, f"--actions {config.actions}", f"the model {source}")
            except ValueError as err:
                raise ValueError(f"{err}; --new-branches gives the model new branches for --actions") from None
    model.settings = replace(model.settings, chunk_frames=config.chunk_frames, shift=config.shift)
    model.backbone.gradient_checkpointing = config.gradient_checkpointing and trainable
    model.backbone.requires_grad_(trainable)
    if trainable and config.train_only == "conditioning":
        if model.backbone.conditioning is None:
            raise ValueError(f"--train-only conditioning, but the model {source} has no conditioning branches: "
                             "give --camera or --actions to add them")
        model.backbone.requires_grad_(False)
        model.backbone.conditioning.requires_grad_(True)
    model.codec.module.requires_grad_(False)
    for net in (model.depth, model.fill):
        if net is not None:
            net.requires_grad_(False).eval()
    model.backbone.train(trainable)
    return model


def check_data_actions(data, stage: Stage) -> None:
    """Refuse data whose actions are not in the space of one of the stage's action-conditioned
    models, naming both sides."""
    if data.actions is None:
        return
    for role, model in vars(stage).items():
        if not isinstance(model, WorldModel):
            continue
        source = getattr(model, "source", None) or role
        conditioning = model.backbone.conditioning_config
        spec = None if conditioning is None else conditioning.action_spec
        if spec is None:
            continue  # a model without an action branch ignores the clips' actions
        if data.action_spec is not None:
            check_same_space(data.action_spec, spec, data.source, f"the stage's {role} ({source})")
        elif data.actions.shape[-1] != spec.dim:
            raise ValueError(f"{data.source} has actions of {data.actions.shape[-1]} components, but the stage's "
                             f"{role} ({source}) takes {spec.describe()}")


def export_model(model: WorldModel, folder: Path, ema_state: dict | None = None, **settings) -> None:
    """Write ``model`` (with EMA weights if given) as a folder ``minwm_env`` loads."""
    original = None
    if ema_state is not None:
        original = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
        own = model.backbone.state_dict()
        model.backbone.load_state_dict({k: ema_state.get(k, own[k]).to(own[k].dtype) for k in own})
    model.settings = replace(model.settings, **settings)
    model.save_pretrained(folder)
    if original is not None:
        model.backbone.load_state_dict(original)


def conditions(model: WorldModel, batch: dict, frames=slice(None)) -> FrameConditions | None:
    if model.backbone.conditioning is None:
        return None
    actions = batch.get("actions")
    if actions is None and model.backbone.conditioning.config.action_spec is not None:
        raise ValueError("the model is action-conditioned but the data has no actions")
    return FrameConditions(batch["w2c"][:, frames], batch["intrinsics"][:, frames],
                           None if actions is None else actions[:, frames])


def rollout_actions(model: WorldModel, batch: dict, num_frames: int) -> torch.Tensor | None:
    """(B, num_frames, d): the actions a rollout of the clip replays (row k moves frame k − 1 to
    k; row 0 is unused), so a training rollout streams exactly as ``env.step`` would. Clips that
    store no actions give the camera deltas between their poses; None for a model without
    conditioning branches (it ignores actions and needs no poses)."""
    actions = batch.get("actions")
    if actions is not None:
        return actions[:, :num_frames]
    spec = model.backbone.conditioning_config.action_spec
    if spec is not None and spec.names != camera.DELTA_NAMES:
        raise ValueError(f"the model's actions are {list(spec.names)}, not camera deltas, and the data has no actions")
    if model.backbone.conditioning is None and not model.settings.warp_reference:
        return None
    c2w = camera.invert_pose(batch["w2c"][:, :num_frames].double())
    deltas = camera.poses_to_deltas(c2w).float()
    return torch.cat([torch.zeros_like(deltas[:, :1]), deltas], dim=1)


def prompt_state(model: WorldModel, batch: dict, batch_size: int) -> PromptState:
    embeds = batch.get("prompt_embeds")
    if embeds is None:
        embeds = model.backbone.null_prompt_embeds(batch_size)
    else:  # the length the env streams it at, whatever the longest prompt of the dataset
        embeds = padded_prompt(model.backbone, embeds)
    return model.backbone.encode_prompt(embeds.to(model.dtype))


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator).to(device)


def sample_sigmas(shape, generator: torch.Generator, shift: float, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Uniform in [low, high], then shifted (docs/design.md §3: training sigmas are shifted like sampling)."""
    return flow.shift_sigma(low + (high - low) * torch.rand(shape, generator=generator), shift)


def chunk_sigmas(batch_size: int, num_frames: int, chunk: int, generator: torch.Generator, shift: float) -> torch.Tensor:
    """(B, num_frames - 1) sigmas, one per chunk (diffusion forcing), for frames 1.."""
    if (num_frames - 1) % chunk:
        raise ValueError(f"clips of {num_frames} latent frames do not split into 1 + chunks of {chunk}")
    per_chunk = sample_sigmas((batch_size, (num_frames - 1) // chunk), generator, shift)
    return per_chunk.repeat_interleave(chunk, dim=1)


def residual_references(model: WorldModel, clean: torch.Tensor, sources: torch.Tensor, batch: dict) -> torch.Tensor:
    """The residual reference of every frame of a clip: frame k's is clean frame ``sources[k]``
    (B, C, F, h, w), reprojected into frame k's cameras for a ``warp_reference`` model (poses
    from ``batch["w2c"]`` and ``batch["intrinsics"]``, the same reprojection streaming does)."""
    reference = clean[:, :, sources]
    if not model.settings.warp_reference:
        return reference
    if batch.get("w2c") is None or batch.get("intrinsics") is None:
        raise ValueError("a warp_reference model needs camera poses (w2c, intrinsics) with its data")
    num_frames = clean.shape[2]
    c2w = camera.invert_pose(batch["w2c"][:, :num_frames].double())
    previous = c2w[:, (torch.arange(num_frames) - 1).clamp_min(0)]  # frame 0: itself, an identity warp
    return model.residual_reference(reference, c2w[:, sources], previous, c2w, batch["intrinsics"][:, :num_frames])


def teacher_forcing_layout(model: WorldModel, clean: torch.Tensor, noisy: torch.Tensor, sigma_noisy: torch.Tensor,
                           chunk: int, batch: dict):
    """Stage 1's input: [clean frames ; noisy frames 1..F-1] with the block-causal mask (a noisy
    chunk sees the clean chunks before it and itself; docs/design.md §7, stage 1).

    Only the clean frames some noisy chunk attends to are in the input: 0..F-chunk-1 (the last
    chunk's past). Later clean frames would be computed and never read, so leaving them out
    changes no output (tested) and saves their cost (clips of one chunk: 5 input frames, not 9).

    ``batch`` holds the clip's poses and actions, and optionally ``reference``: the noisy
    frames' residual references (B, C', F - 1, h, w) when the caller built them (a memory's).
    Returns x, timestep, positions, frame mask,
    conditions, the index where the noisy half starts, and the residual reference of every
    input frame (for a noisy chunk: the clean frame just before it; the clean frames' outputs
    are never used).
    """
    batch_size, _, num_frames = clean.shape[:3]
    context = num_frames - chunk  # clean frames some noisy chunk attends to
    conds = conditions(model, batch, slice(0, num_frames))
    positions = torch.arange(num_frames)
    blocks = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(num_frames - 1) // chunk + 1])
    x = torch.cat([clean[:, :, :context], noisy], dim=2)
    timestep = torch.cat([torch.zeros(batch_size, context, device=clean.device),
                          sigma_noisy.to(clean.device) * 1000], 1)
    all_positions = torch.cat([positions[:context], positions[1:]])
    is_noisy = torch.cat([torch.zeros(context, dtype=torch.bool), torch.ones(num_frames - 1, dtype=torch.bool)])
    mask = causal_frame_mask(all_positions, torch.cat([blocks[:context], blocks[1:]]), noisy=is_noisy)
    all_conds = None if conds is None else FrameConditions.cat([conds.frames(slice(0, context)),
                                                                conds.frames(slice(1, None))])
    if "reference" in batch:  # given (stage 2c with a view memory: the reference the stream planned)
        reference = batch["reference"]
    else:
        previous = torch.cat([torch.zeros(1, dtype=torch.long), (torch.arange(num_frames - 1) // chunk) * chunk])
        reference = residual_references(model, clean, previous, batch)[:, :, 1:]  # the clean frame before each chunk
    # the clean half is written as streaming writes context: with no reference (zeros)
    reference = torch.cat([reference.new_zeros(*reference.shape[:2], context, *reference.shape[3:]), reference],
                          dim=2)
    return x, timestep, all_positions, mask, all_conds, context, reference


def squared_error(model: WorldModel, prediction: torch.Tensor, target: torch.Tensor, reference: torch.Tensor | None,
                  unseen_weight: float = 1.0) -> torch.Tensor:
    """Mean squared error of (B, C, F, h, w) latents; with ``unseen_weight`` ≠ 1 each pixel's
    error counts ``1 + (unseen_weight − 1)·(1 − validity)`` times (a weighted mean), the
    validity coming with a ``warp_validity`` model's ``reference`` of the same frames. New
    content is a few percent of a clip's pixels (5.7% one chunk after a clean start, measured),
    so an unweighted loss hardly asks the network to draw it."""
    error = (prediction.float() - target.float()).square()
    if unseen_weight == 1.0:
        return error.mean()
    if not model.settings.warp_validity or reference is None:
        raise ValueError("unseen_weight needs a model whose reference carries its validity (warp_validity)")
    channels = error.shape[1]
    validity = reference[:, channels:].float()  # (B, C / 3, F, h, w), packed like one colour channel
    if validity.shape[1] * 3 != channels:
        raise ValueError(f"a reference of {reference.shape[1]} channels has no validity for {channels} latent channels")
    factor = model.codec.temporal_factor
    # packed colours are (time, colour, cell) major to minor, the validity (time, cell): repeat per colour
    grouped = validity.unflatten(1, (factor, 1, -1)).expand(-1, -1, 3, -1, *validity.shape[2:])
    weight = 1.0 + (unseen_weight - 1.0) * (1.0 - grouped.flatten(1, 3).clamp(0, 1))
    return (weight * error).sum() / weight.expand_as(error).sum()


def start_reference(model: WorldModel, clean: torch.Tensor, batch: dict) -> torch.Tensor:
    """Bidirectional models (stage 0, DMD's scores) take the start frame as every frame's reference."""
    if not model.settings.warp_reference:
        return clean[:, :, :1]
    return residual_references(model, clean, torch.zeros(clean.shape[2], dtype=torch.long), batch)


def guided_prediction(model: WorldModel, x, timestep, positions, batch: dict, guidance: float, *,
                      frame_mask=None, conds: FrameConditions | None = None, reference=None) -> torch.Tensor:
    """A model output with classifier-free guidance (cond: the batch's prompt; uncond: the null prompt)."""
    batch_size = x.shape[0]
    if guidance == 1.0:
        return model.backbone(x, timestep, positions, prompt_state(model, batch, batch_size), frame_mask=frame_mask,
                              conditions=conds, reference=reference)
    cond_embeds = batch.get("prompt_embeds")
    both = guidance_prompt(model.backbone, [None if cond_embeds is None else cond_embeds.to(model.dtype), None],
                           batch_size)
    out = model.backbone(torch.cat([x, x]), torch.cat([timestep, timestep]), positions, both, frame_mask=frame_mask,
                         conditions=None if conds is None else conds.repeat(2),
                         reference=None if reference is None else torch.cat([reference, reference]))
    cond, uncond = out[:batch_size], out[batch_size:]
    return uncond + guidance * (cond - uncond)


def student_sigmas(config: TrainConfig) -> list[float]:
    return flow.timesteps_to_sigmas(config.student_timesteps, config.shift).tolist()


class SingleModelStage(Stage):
    """A stage that trains one model (stages 0, 1, 2a, 2b): it is checkpointed, EMA'd and exported."""

    few_step = False  # export with the student's few-step schedule

    def __init__(self, config: TrainConfig, device: torch.device):
        super().__init__(config, device)
        self.model = build_model(config, config.model, device)

    def modules(self):
        return {"backbone": self.model.backbone}

    def param_groups(self):
        return {"model": {"params": list(self.model.backbone.parameters())}}

    def ema_module(self):
        return self.model.backbone

    def export(self, folder: Path, ema_state, model=None):
        settings = {"sampler_timesteps": tuple(self.config.student_timesteps)} if self.few_step else {}
        export_model(model or self.model, folder, ema_state, **settings)
