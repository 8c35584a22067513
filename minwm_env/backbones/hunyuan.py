"""Block-causal, streaming HunyuanVideo-1.5 on top of ``diffusers.HunyuanVideo15Transformer3DModel``, without forking it.

HunyuanVideo-1.5 is an MMDiT: every block runs two streams, video and text (Qwen2.5-VL tokens
through the stock token refiner, ByT5 glyph tokens, SigLIP image tokens), each with its own
modulation and MLP, mixed by one joint attention. What changes around the pretrained model:

* every block's ``attn`` gets :class:`CausalJointAttnProcessor`. Called by the unmodified
  ``HunyuanVideo15Transformer3DModel.forward`` it hands the call to diffusers' own
  ``HunyuanVideo15AttnProcessor2_0``, so installing it never changes the bidirectional model;
  called by this adapter it runs one of two passes (below);
* :class:`HunyuanRotary` computes the model's 3-axis RoPE (time first; ``rope_axes_dim``,
  ``rope_theta`` = 256 from the config) on the fly at explicit frame positions, so chunk c of
  an endless stream rotates by its own positions and no table runs out;
* timesteps are per latent frame.

**What text tokens attend to: text only.** In the stock model the text stream attends to the
video tokens too, so its K/V change with every chunk and could not be computed once. In the
causal model the text stream does not depend on video: inside the joint attention text
queries see text keys only (video queries still see video and text keys), and the text stream
is modulated by a fixed *text timestep* (``text_timestep``, default 0) instead of the frames'
noise levels, which in a causal stream differ from frame to frame. The whole text stream, all
layers, is therefore a function of the prompt alone: :meth:`CausalHunyuan15.encode_prompt` runs
it once per episode and keeps each layer's text K/V in a :class:`HunyuanPromptState`; chunks
only read them. minWM makes the same two choices for its HunyuanVideo-1.5 world model (facts
read from github.com/shengshu-ai/minWM, ``HY15/trainer/models/hyvideo/transformer/``
``ar_action_hunyuanvideo_1_5_transformer.py``: ``forward_txt`` attends text to text and caches
``k_txt``/``v_txt``; its teacher-forcing mask, ``flash_attn_no_pad.prepare_teacher_forcing_mask``,
lets text rows see text only; every pipeline passes ``timestep_txt = 0``). Its PRoPE branch
also attends to the untransformed text K/V, as ours does.

**The two passes both go through the stock block.** ``HunyuanVideo15TransformerBlock.forward``
is called for every pass, with the stream that the pass does not compute left empty (zero
tokens): :meth:`~CausalHunyuan15.encode_prompt` calls it with no video tokens and the text
stream, :meth:`~CausalHunyuan15.forward` with the video stream and no text tokens (the text
K/V reach the processor in the context). So diffusers does every modulation, gate and MLP, and
the blocks remain the units that gradient checkpointing re-runs and FSDP shards. For the video
pass the frames are folded into the batch: the block sees ``(B·F, tokens_per_frame, dim)``
with one timestep embedding per row, which is how per-frame timesteps go through the stock
``AdaLayerNormZero`` (it takes ``(N, dim)`` embeddings); the processor unfolds the frames
again for attention. Everything per forward (rotary cos/sin, frame mask, cache, PRoPE inputs,
the prompt's K/V) travels as one immutable value in the slot the block hands to the processor
as ``image_rotary_emb`` (docs/design.md §2: never a module attribute or a global).

**The 65-channel input** (``in_channels = 2·C + 1``: the noisy latent, C conditioning
channels and a mask channel) is filled by the adapter; callers pass the C latent channels only.
HunyuanVideo-1.5 conditions image-to-video on the start latent placed in the conditioning
channels of frame 0 with mask 1, every other frame zeros with mask 0 (text-to-video: zeros
everywhere). minwm starts an episode by writing the start image as a clean frame at position 0
(docs/design.md §4), so with ``image_start`` (default for an ``i2v`` config) the frame at
position 0 is the start image: its conditioning channels hold its own latent and its mask is
1; every generated frame, in any chunk, gets zeros and mask 0. A frame at position 0 must then
be clean (timestep 0) — anything else raises. View-memory frames, which the stream writes at
position 0 (``streaming.MEMORY_POSITION``), are observed clean frames too and get the same
treatment. Without ``image_start`` all frames get zeros and mask 0. The rule is a function of (position, latent), so a full-sequence forward and a
streamed one fill the channels identically. (A config with ``in_channels = C`` has no such
channels.)

Not supported: temporal patches > 1 (a latent frame is the unit of causality), the MeanFlow
``timestep_r`` input (the super-resolution models), and a reference as extra input channels
(the channels beyond the latent are HunyuanVideo's own; ``residual_reference`` still adds the
output to the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import HunyuanVideo15Transformer3DModel
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..conditioning import Conditioning, ConditioningConfig, FrameConditions, apply_frame_transform
from ..flow import check_prediction_type
from .base import AttentionContext, CausalBackbone, KVCache, PromptState, expand_frame_mask
from .wan import FramePositionRotary, apply_rotary


class HunyuanRotary(FramePositionRotary):
    """HunyuanVideo-1.5's rotary embedding (time, height, width axes) at explicit frame positions.

    The head dimension splits by the config's ``rope_axes_dim`` (default 16 time, 56 height,
    56 width channels), time first, as ``HunyuanVideo15RotaryPosEmbed`` does; each axis rotates
    interleaved pairs by ``pos · θ^(−2i/d)`` with ``θ = rope_theta`` (256). The maths is Wan's
    (:class:`FramePositionRotary`: float64 angles from integer positions, no table), with
    HunyuanVideo's split and θ. The output layout is the one :func:`apply_rotary` takes.
    """

    def __init__(self, axes_dims: tuple[int, int, int], theta: float = 256.0):
        axes_dims = tuple(int(d) for d in axes_dims)
        if len(axes_dims) != 3 or any(d <= 0 or d % 2 for d in axes_dims):
            raise ValueError(f"rope_axes_dim must be three positive even sizes (time, height, width), got {axes_dims}")
        super().__init__(sum(axes_dims), theta)
        self.t_dim, self.h_dim, self.w_dim = axes_dims


@dataclass
class HunyuanPromptState(PromptState):
    """Each layer's text K/V (after ``norm_added_k``), plus which text tokens are real.

    ``key_mask`` (B, L_text) is True for tokens that video queries may attend to (False for
    padding of the Qwen or ByT5 embeddings); None means all. Keeping padding as masked keys
    instead of dropping it lets rows with different prompt lengths share one batch.
    """

    key_mask: torch.Tensor | None = None

    def select(self, rows: list[int]) -> "HunyuanPromptState":
        return HunyuanPromptState([k[rows] for k in self.keys], [v[rows] for v in self.values],
                                  None if self.key_mask is None else self.key_mask[rows])

    def repeat(self, times: int) -> "HunyuanPromptState":
        return HunyuanPromptState([k.repeat(times, 1, 1, 1) for k in self.keys], [v.repeat(times, 1, 1, 1) for v in self.values],
                                  None if self.key_mask is None else self.key_mask.repeat(times, 1))

    @staticmethod
    def cat(states: "list[PromptState]") -> "HunyuanPromptState":
        """Rows of several states in one; shorter ones are padded with masked keys."""
        lengths = [s.keys[0].shape[2] for s in states]
        length = max(lengths)
        masks = [getattr(s, "key_mask", None) for s in states]
        key_mask = None
        if any(m is not None for m in masks) or len(set(lengths)) > 1:
            key_mask = torch.cat([
                F.pad(torch.ones(s.batch_size, n, dtype=torch.bool, device=s.keys[0].device) if m is None else m,
                      (0, length - n), value=False)
                for s, m, n in zip(states, masks, lengths)])

        def join(tensors: list[torch.Tensor]) -> torch.Tensor:  # (b, heads, L_i, D) → padded to L, one batch
            return torch.cat([F.pad(t, (0, 0, 0, length - t.shape[2])) for t in tensors])

        num_layers = len(states[0].keys)
        keys = [join([s.keys[i] for s in states]) for i in range(num_layers)]
        values = [join([s.values[i] for s in states]) for i in range(num_layers)]
        return HunyuanPromptState(keys, values, key_mask)


class VideoPass(NamedTuple):
    """What the processor needs for the video stream of one forward (immutable, see module doc)."""

    context: AttentionContext
    prompt: PromptState  # each layer's text K/V (and key mask), read, never recomputed
    batch_size: int  # B: the block sees (B·F, tokens_per_frame, dim) and the processor unfolds it


class TextPass(NamedTuple):
    """The text-only pass of :meth:`CausalHunyuan15.encode_prompt`: text attends to text."""

    key_mask: torch.Tensor | None  # (B, L_text) bool
    record: list  # the processor appends this layer's (keys, values)


def _joint_mask(video_mask: torch.Tensor | None, text_mask: torch.Tensor | None, video_keys: int,
                text_keys: int) -> torch.Tensor | None:
    """One boolean mask over [video keys ; text keys], or None when nothing is masked.

    ``video_mask`` is None, (L_q, L_k) (full-sequence mode) or (b, 1, L_q or 1, L_k) (from a
    cache whose rows differ, or a memory write); ``text_mask`` is None or (B, L_text).
    """
    if video_mask is None and text_mask is None:
        return None
    if video_mask is None:
        video_mask = torch.ones(1, 1, 1, video_keys, dtype=torch.bool, device=text_mask.device)
    elif video_mask.ndim == 2:
        video_mask = video_mask[None, None]
    if text_mask is None:
        text_mask = torch.ones(1, 1, 1, text_keys, dtype=torch.bool, device=video_mask.device)
    else:
        text_mask = text_mask[:, None, None, :].to(video_mask.device)
    lead = torch.broadcast_shapes(video_mask.shape[:3], text_mask.shape[:3])
    return torch.cat([video_mask.expand(*lead, -1), text_mask.expand(*lead, -1)], dim=-1)


class CausalJointAttnProcessor:
    """The joint attention of one block (see the module docstring for its three modes)."""

    def __init__(self, layer_index: int):
        self.layer_index = layer_index
        self.stock = HunyuanVideo15AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if isinstance(image_rotary_emb, VideoPass):
            return self._video(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        if isinstance(image_rotary_emb, TextPass):
            return self._text(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        # Called by the stock HunyuanVideo15Transformer3DModel.forward: behave exactly like diffusers.
        return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    # -- text stream (encode_prompt) -------------------------------------------------------------
    def _text(self, attn, hidden_states, encoder_hidden_states, text: TextPass):
        query, key, value = text_qkv(attn, encoder_hidden_states)
        mask = None if text.key_mask is None else text.key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        text.record.append((key, value))
        out = attn.to_add_out(out.transpose(1, 2).flatten(2, 3).type_as(query))
        return hidden_states, out  # no video tokens in this pass: hidden_states is empty

    # -- video stream (forward) ------------------------------------------------------------------
    def _video(self, attn, hidden_states, encoder_hidden_states, video: VideoPass):
        context = video.context
        rows, tokens_per_frame, dim = hidden_states.shape
        x = hidden_states.reshape(video.batch_size, -1, dim)  # (B·F, T, dim) → (B, F·T, dim): frames attend jointly
        query = attn.norm_q(attn.to_q(x).unflatten(2, (attn.heads, -1)))  # (B, L, heads, D), as diffusers orders it
        key = attn.norm_k(attn.to_k(x).unflatten(2, (attn.heads, -1)))
        value = attn.to_v(x).unflatten(2, (attn.heads, -1))
        out = self._attend(video, apply_rotary(query, context.freqs_cos, context.freqs_sin).transpose(1, 2),
                           apply_rotary(key, context.freqs_cos, context.freqs_sin).transpose(1, 2),
                           value.transpose(1, 2), "main")
        out = attn.to_out[1](attn.to_out[0](out))
        if context.prope is not None:
            out = out + self._prope_branch(video, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        # The text stream is not computed here: its (empty) tokens go back unchanged.
        return out.reshape(rows, tokens_per_frame, dim), encoder_hidden_states

    def _attend(self, video: VideoPass, query, key, value, stream: str) -> torch.Tensor:
        """Video queries over [video keys (frame mask, or cache context + this forward) ; text keys]."""
        context = video.context
        mask = context.attention_mask
        if context.kv_cache is not None:
            key, value, mask = context.kv_cache.extend(self.layer_index, key, value, stream)
        text_keys = video.prompt.keys[self.layer_index].to(key.dtype)
        text_values = video.prompt.values[self.layer_index].to(value.dtype)
        mask = _joint_mask(mask, getattr(video.prompt, "key_mask", None), key.shape[2], text_keys.shape[2])
        key = torch.cat([key, text_keys.expand(key.shape[0], -1, -1, -1)], dim=2)
        value = torch.cat([value, text_values.expand(value.shape[0], -1, -1, -1)], dim=2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return out.transpose(1, 2).flatten(2, 3).type_as(query)  # (B, L, heads·D)

    def _prope_branch(self, video: VideoPass, query, key, value) -> torch.Tensor:
        """PRoPE (docs/design.md §5) on the normalised, un-rotated video projections; the text
        K/V join untransformed (text has no camera), as in minWM's HunyuanVideo-1.5 branch."""
        prope = video.context.prope
        tpf = prope.tokens_per_frame
        query = apply_frame_transform(query, prope.projection.transpose(-1, -2), tpf)
        key = apply_frame_transform(key, prope.inverse, tpf)
        value = apply_frame_transform(value, prope.inverse, tpf)
        out = self._attend(video, query, key, value, "prope")  # (B, L, heads·D)
        heads = query.shape[1]
        out = apply_frame_transform(out.unflatten(2, (heads, -1)).transpose(1, 2), prope.projection, tpf)
        return prope.out_projections[self.layer_index](out.transpose(1, 2).flatten(2, 3))


def text_qkv(attn, text_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The text stream's query, key, value (B, heads, L, D), normalised as diffusers does."""
    query = attn.add_q_proj(text_tokens).unflatten(2, (attn.heads, -1))
    key = attn.add_k_proj(text_tokens).unflatten(2, (attn.heads, -1))
    value = attn.add_v_proj(text_tokens).unflatten(2, (attn.heads, -1))
    if attn.norm_added_q is not None:
        query = attn.norm_added_q(query)
    if attn.norm_added_k is not None:
        key = attn.norm_added_k(key)
    return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)


class CausalHunyuan15(CausalBackbone):
    """HunyuanVideo-1.5 as a block-causal, streaming backbone (docs/design.md §2, §4; module docstring)."""

    # Methods that run sharded submodules outside ``forward``: under FSDP2 they must be
    # registered with ``torch.distributed.fsdp.register_fsdp_forward_method`` so the root's
    # lazy initialisation and unsharding run around them.
    fsdp_forward_methods = ("encode_prompt",)

    def __init__(self, transformer: HunyuanVideo15Transformer3DModel, prediction_type: str = "v",
                 conditioning: ConditioningConfig | None = None, residual_reference: bool = False,
                 image_start: bool | None = None, text_timestep: float = 0.0):
        super().__init__()
        config = transformer.config
        if config.patch_size_t != 1:
            raise ValueError(f"causal chunking needs a temporal patch of 1, the config has patch_size_t={config.patch_size_t}")
        if sum(config.rope_axes_dim) != config.attention_head_dim:
            raise ValueError(f"rope_axes_dim {tuple(config.rope_axes_dim)} must add up to attention_head_dim "
                             f"{config.attention_head_dim}")
        latent = config.out_channels or config.in_channels
        if config.in_channels not in (latent, 2 * latent + 1):
            raise ValueError(f"in_channels must be out_channels ({latent}) or 2·out_channels + 1 ({2 * latent + 1}: "
                             f"latent, conditioning latent and mask), the config has {config.in_channels}")
        self.transformer = transformer
        self.prediction_type = check_prediction_type(prediction_type)
        self.residual_reference = residual_reference
        has_condition = config.in_channels == 2 * latent + 1
        self.image_start = (config.task_type == "i2v" and has_condition) if image_start is None else bool(image_start)
        if self.image_start and not has_condition:
            raise ValueError("image_start needs the conditioning channels (in_channels = 2·out_channels + 1)")
        # The text stream's fixed noise level (module docstring); minWM uses 0.
        self.text_timestep = float(text_timestep)
        self.rotary = HunyuanRotary(tuple(config.rope_axes_dim), config.rope_theta)
        self.gradient_checkpointing = False
        self.conditioning = None
        if conditioning is not None and (conditioning.uses_camera or conditioning.action_spec is not None):
            self.conditioning = Conditioning(conditioning, dim=self.inner_dim, num_layers=config.num_layers,
                                             head_dim=config.attention_head_dim, patch=self.spatial_patch)
        for i, block in enumerate(transformer.transformer_blocks):
            block.attn.set_processor(CausalJointAttnProcessor(i))

    # -- sizes, all from the config -------------------------------------------------------
    @property
    def config(self):
        return self.transformer.config

    @property
    def inner_dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    @property
    def latent_channels(self) -> int:
        return self.config.out_channels or self.config.in_channels

    @property
    def text_dim(self) -> int:
        """Width of the prompt embeddings :meth:`encode_prompt` takes (Qwen2.5-VL: 3584)."""
        return self.config.text_embed_dim

    @property
    def condition_channels(self) -> int:
        """Input channels the adapter fills itself: conditioning latent + mask (0 or C + 1)."""
        return self.config.in_channels - self.latent_channels

    @property
    def reference_channels(self) -> int:
        """No reference enters as input channels (those are HunyuanVideo's conditioning channels)."""
        return 0

    @property
    def spatial_patch(self) -> tuple[int, int]:
        return (self.config.patch_size, self.config.patch_size)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        ph, pw = self.spatial_patch
        if latent_height % ph or latent_width % pw:
            raise ValueError(f"latent size {latent_height}x{latent_width} is not divisible by the patch {ph}x{pw}")
        return (latent_height // ph) * (latent_width // pw)

    @property
    def conditioning_config(self) -> ConditioningConfig:
        return ConditioningConfig() if self.conditioning is None else self.conditioning.config

    @property
    def uses_prope(self) -> bool:
        return self.conditioning is not None and self.conditioning.prope_out is not None

    # -- prompt ------------------------------------------------------------------------------
    def null_prompt_embeds(self, batch_size: int) -> torch.Tensor:
        weight = self.transformer.context_embedder.proj_in.weight
        return torch.zeros(batch_size, 1, self.text_dim, device=weight.device, dtype=weight.dtype)

    def encode_prompt(self, prompt_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      byt5_embeds: torch.Tensor | None = None, byt5_mask: torch.Tensor | None = None,
                      image_embeds: torch.Tensor | None = None) -> HunyuanPromptState:
        """The text stream, once per episode: every layer's text K/V.

        prompt_embeds (B, L, text_embed_dim) Qwen2.5-VL embeddings (zero-padded like Wan's
        without a mask, or with ``attention_mask`` (B, L), 1 = real token); optional ByT5 glyph
        embeddings (B, L2, text_embed_2_dim) with ``byt5_mask``; optional SigLIP image embeddings
        (B, L3, image_embed_dim) of the start image. Each source goes through its stock embedder
        (the Qwen tokens through the token refiner at the text timestep) plus its
        ``cond_type_embed`` row (0 Qwen, 1 ByT5, 2 image), as in the stock forward; leaving a
        source out equals the stock model's masked (t2v) tokens. Then the text stream runs
        through every block, text attending to text only (module docstring).
        """
        model = self.transformer
        config = self.config
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != config.text_embed_dim:
            raise ValueError(f"prompt embeddings must be (B, L, {config.text_embed_dim}), got {tuple(prompt_embeds.shape)}")
        batch = prompt_embeds.shape[0]
        sources = [("prompt", prompt_embeds, attention_mask, config.text_embed_dim, 0)]
        if byt5_embeds is not None:
            sources.append(("byt5", byt5_embeds, byt5_mask, config.text_embed_2_dim, 1))
        elif byt5_mask is not None:
            raise ValueError("byt5_mask was given without byt5_embeds")
        if image_embeds is not None:
            sources.append(("image", image_embeds, None, config.image_embed_dim, 2))
        for name, embeds, mask, dim, _ in sources:
            if embeds.ndim != 3 or embeds.shape[0] != batch or embeds.shape[-1] != dim:
                raise ValueError(f"{name} embeddings must be ({batch}, L, {dim}), got {tuple(embeds.shape)}")
            if mask is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(f"{name} mask must be {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")

        dtype = model.context_embedder.proj_in.weight.dtype
        text_t = torch.full((batch,), self.text_timestep, device=prompt_embeds.device, dtype=dtype)
        tokens, masks = [], []
        for name, embeds, mask, _, kind in sources:
            embeds = embeds.to(dtype)
            if name == "prompt":
                embedded = model.context_embedder(embeds, text_t, mask)
            elif name == "byt5":
                embedded = model.context_embedder_2(embeds)
            else:
                embedded = model.image_embedder(embeds)
            kinds = torch.full(embedded.shape[:2], kind, dtype=torch.long, device=embedded.device)
            tokens.append(embedded + model.cond_type_embed(kinds))
            masks.append(None if mask is None else mask.to(embedded.device).bool())
        text = torch.cat(tokens, dim=1)
        key_mask = None
        if any(m is not None for m in masks):
            key_mask = torch.cat([torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) if m is None else m
                                  for t, m in zip(tokens, masks)], dim=1)
            if not bool(key_mask.any(dim=1).all()):
                raise ValueError("every prompt row needs at least one real token (its masks are all zero)")

        temb = model.time_embed(text_t)
        no_video = text.new_zeros(batch, 0, text.shape[-1])
        keys, values = [], []
        for block in model.transformer_blocks:
            record: list = []
            _, text = block(no_video, text, temb, None, TextPass(key_mask, record))
            keys.append(record[0][0])
            values.append(record[0][1])
        return HunyuanPromptState(keys, values, key_mask)

    # -- cache and sharding --------------------------------------------------------------------
    def new_cache(self, *, batch_size: int, latent_height: int, latent_width: int, window_frames: int,
                  sink_frames: int, max_new_frames: int, memory_frames: int = 0) -> KVCache:
        weight = self.transformer.x_embedder.proj.weight
        extra = {"memory_frames": memory_frames} if memory_frames else {}
        return KVCache(num_layers=self.num_layers, batch_size=batch_size, num_heads=self.config.num_attention_heads,
                       head_dim=self.config.attention_head_dim,
                       tokens_per_frame=self.tokens_per_frame(latent_height, latent_width),
                       window_frames=window_frames, sink_frames=sink_frames, max_new_frames=max_new_frames,
                       device=weight.device, dtype=weight.dtype,
                       streams=("main", "prope") if self.uses_prope else ("main",), **extra)

    def fsdp_layout(self) -> tuple[list[nn.Module], set[nn.Parameter]]:
        """How FSDP shards this backbone: the units are the text path's embedders (token refiner,
        ByT5 and image projections) and every block (the backbone itself is the root), and the
        parameters that stay replicated are the root's that :meth:`encode_prompt` uses (time
        embedding, ``cond_type_embed``). encode_prompt runs the blocks' own forward, so they
        unshard as in any forward; it must be registered as a forward method of the root
        (:attr:`fsdp_forward_methods`). Each block holds both streams, so a video forward also
        gathers the block's text-stream weights."""
        model = self.transformer
        units = [model.context_embedder, model.context_embedder_2, model.image_embedder, *model.transformer_blocks]
        replicated = set(model.time_embed.parameters()) | set(model.cond_type_embed.parameters())
        return units, replicated

    # -- the video stream ------------------------------------------------------------------------
    def _condition_input(self, hidden_states: torch.Tensor, frame_positions: torch.Tensor,
                         timestep: torch.Tensor) -> torch.Tensor:
        """The conditioning latent and mask channels (module docstring)."""
        batch, channels, num_frames, height, width = hidden_states.shape
        condition = hidden_states.new_zeros(batch, channels + 1, num_frames, height, width)
        if not self.image_start or frame_positions.device.type == "meta":
            return condition
        at_start = frame_positions.detach().cpu() == 0  # (decided on the host: meta tensors count FLOPs)
        if not bool(at_start.any()):
            return condition
        start = at_start.nonzero()[:, 0].to(hidden_states.device)  # frame indices
        if timestep.device.type != "meta" and bool((timestep[:, start.to(timestep.device)] != 0).any()):
            raise ValueError("with image_start the frame at position 0 is the start image: its timestep must be 0 "
                             "(it is clean), got a noisy frame at position 0")
        condition[:, :channels, start] = hidden_states[:, :, start]
        condition[:, channels, start] = 1
        return condition

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, frame_positions: torch.Tensor,
                prompt: PromptState, *, kv_cache: KVCache | None = None, cache_write: bool = False,
                frame_mask: torch.Tensor | None = None, conditions: FrameConditions | None = None,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        model = self.transformer
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be (B, C, F, H, W), got {tuple(hidden_states.shape)}")
        batch, channels, num_frames, height, width = hidden_states.shape
        if channels != self.latent_channels:
            raise ValueError(f"hidden_states must have the {self.latent_channels} latent channels, got {channels}"
                             + (f"; the {self.condition_channels} conditioning channels are filled by the adapter"
                                if channels == self.config.in_channels and self.condition_channels else ""))
        if self.residual_reference and reference is None and not cache_write:
            raise ValueError("this model predicts a residual on a reference frame: pass reference "
                             "(B, C, 1 or F, H, W), the last clean latent frame before each frame's chunk")
        if timestep.shape != (batch, num_frames):
            raise ValueError(f"timestep must be (B, F) = ({batch}, {num_frames}), got {tuple(timestep.shape)}")
        if frame_positions.shape != (num_frames,):
            raise ValueError(f"frame_positions must be ({num_frames},), got {tuple(frame_positions.shape)}")
        if prompt.batch_size != batch:
            raise ValueError(f"prompt batch {prompt.batch_size} does not match latent batch {batch}")
        if len(prompt.keys) != self.num_layers:
            raise ValueError(f"the prompt state has {len(prompt.keys)} layers, the model {self.num_layers}: "
                             "make it with this backbone's encode_prompt")
        if kv_cache is not None and frame_mask is not None:
            raise ValueError("frame_mask is for full-sequence mode; streaming mode attends to the whole cache")
        ph, pw = self.spatial_patch
        post_h, post_w = height // ph, width // pw
        tokens_per_frame = self.tokens_per_frame(height, width)

        branches = self.conditioning
        if branches is not None:
            branches.check(conditions, batch, num_frames)
        dtype = model.x_embedder.proj.weight.dtype

        freqs_cos, freqs_sin = self.rotary(frame_positions, post_h, post_w, hidden_states.device)
        mask = None if frame_mask is None else expand_frame_mask(frame_mask.to(hidden_states.device), tokens_per_frame)
        prope = None if branches is None else branches.prope_inputs(conditions, tokens_per_frame, dtype)
        video = VideoPass(AttentionContext(freqs_cos, freqs_sin, mask, kv_cache, cache_write, prope), prompt, batch)

        x = hidden_states
        if self.condition_channels:
            x = torch.cat([x, self._condition_input(hidden_states, frame_positions, timestep)], dim=1)
        x = model.x_embedder(x.to(dtype))  # (B, F·T, dim), tokens in (frame, row, column) order
        temb = model.time_embed(timestep.reshape(-1).to(dtype))  # (B·F, dim): one embedding per frame
        if branches is not None:
            rays = branches.token_embedding(conditions, height, width, dtype)
            if rays is not None:
                x = x + rays
            actions = branches.frame_embedding(conditions, dtype)
            if actions is not None:
                temb = temb + actions.reshape(batch * num_frames, -1).to(temb.dtype)

        x = x.reshape(batch * num_frames, tokens_per_frame, -1)  # frames folded into the batch (module docstring)
        no_text = x.new_zeros(batch * num_frames, 0, x.shape[-1])
        for block in model.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, _ = checkpoint(block, x, no_text, temb, None, video, use_reentrant=False)
            else:
                x, _ = block(x, no_text, temb, None, video)
        if kv_cache is not None and cache_write:
            kv_cache.commit(frame_positions.tolist())

        x = model.proj_out(model.norm_out(x, temb))  # (B·F, T, C·ph·pw), per-frame shift/scale
        x = x.reshape(batch, num_frames, post_h, post_w, -1, 1, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        out = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if self.residual_reference and reference is not None:
            out = out + reference[:, :out.shape[1]].to(out.dtype)
        return out
