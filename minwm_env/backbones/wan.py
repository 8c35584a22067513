"""Block-causal, streaming Wan2.1 on top of ``diffusers.WanTransformer3DModel``, without forking it.

What changes around the pretrained model:

* self-attention (``blocks[i].attn1``) gets :class:`CausalSelfAttnProcessor`: RoPE from explicit
  frame positions, a frame-level mask in full-sequence mode, and the per-layer KV cache in
  streaming mode;
* cross-attention (``blocks[i].attn2``) gets :class:`CachedCrossAttnProcessor`, which reads
  the prompt's K/V from a :class:`PromptState` computed once per episode;
* :class:`FramePositionRotary` computes Wan's 3-axis RoPE on the fly for any frame position
  (diffusers' table stops at ``rope_max_seq_len`` = 1024);
* timesteps are per latent frame, so chunks at different noise levels share one forward.

Both processors fall back to diffusers' own behaviour when called by the unmodified
``WanTransformer3DModel.forward``, so installing them never changes the bidirectional model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..conditioning import Conditioning, ConditioningConfig, FrameConditions, apply_frame_transform
from ..flow import check_prediction_type
from .base import AttentionContext, CausalBackbone, KVCache, PromptState, compile_streaming, expand_frame_mask


def apply_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, L, heads, D), as Wan does."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(x)


class FramePositionRotary(nn.Module):
    """Wan's rotary embedding (frame, height, width axes) at explicit frame positions.

    The head dimension splits as in diffusers' ``WanRotaryPosEmbed``: ``2 * (D // 6)`` channels
    each for height and width, the rest for time; angles are computed in float64 from the
    positions, so frame 10**6 is as exact as frame 0 and no table runs out.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.h_dim = self.w_dim = 2 * (head_dim // 6)
        self.t_dim = head_dim - self.h_dim - self.w_dim

    def _inv_freq(self, dim: int) -> torch.Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu")[: dim // 2] / dim))

    def _angles(self, positions: torch.Tensor, dim: int) -> torch.Tensor:
        angles = positions.to(torch.float64)[:, None] * self._inv_freq(dim)[None, :]
        return angles.repeat_interleave(2, dim=1)  # (N, dim): pairs share an angle

    def forward(self, frame_positions: torch.Tensor, height: int, width: int,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """frame_positions (F,) → cos, sin of shape (1, F·height·width, 1, head_dim), float32."""
        # float64 angles are computed on the CPU (MPS has no float64) and moved once.
        positions = frame_positions.detach().to("cpu")
        num_frames = positions.shape[0]
        t = self._angles(positions, self.t_dim)
        h = self._angles(torch.arange(height, device="cpu"), self.h_dim)
        w = self._angles(torch.arange(width, device="cpu"), self.w_dim)
        angles = torch.cat([
            t[:, None, None, :].expand(num_frames, height, width, -1),
            h[None, :, None, :].expand(num_frames, height, width, -1),
            w[None, None, :, :].expand(num_frames, height, width, -1),
        ], dim=-1).reshape(1, num_frames * height * width, 1, self.head_dim)
        device = frame_positions.device if device is None else device
        return angles.cos().float().to(device), angles.sin().float().to(device)


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(2, (heads, -1)).transpose(1, 2)  # (B, L, inner) → (B, heads, L, D)


class CausalSelfAttnProcessor:
    """Self-attention with explicit-position RoPE, a frame mask or a KV cache (see module doc)."""

    def __init__(self, layer_index: int):
        self.layer_index = layer_index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if not isinstance(rotary_emb, AttentionContext):
            # Called by the stock WanTransformer3DModel.forward: behave like diffusers.
            context = AttentionContext(rotary_emb[0], rotary_emb[1], attention_mask, None, False)
        else:
            context = rotary_emb
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # (B, L, heads, D)
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        out = self._attend(context, apply_rotary(query, context.freqs_cos, context.freqs_sin).transpose(1, 2),
                           apply_rotary(key, context.freqs_cos, context.freqs_sin).transpose(1, 2),
                           value.transpose(1, 2), "main")
        out = attn.to_out[1](attn.to_out[0](out))
        if context.prope is not None:
            out = out + self._prope_branch(context, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        return out

    def _attend(self, context: AttentionContext, query, key, value, stream: str) -> torch.Tensor:
        mask = context.attention_mask
        if context.kv_cache is not None:
            key, value, row_mask = context.kv_cache.extend(self.layer_index, key, value, stream)
            if mask is None:
                mask = row_mask
            elif row_mask is not None or mask.shape[1] != key.shape[2]:
                # a streaming mask covers [the cache's frames ; the forward's], rows in lockstep
                raise ValueError(f"a streaming frame_mask must cover the cache's frames and the forward's "
                                 f"({key.shape[2]} keys, rows in lockstep), got {tuple(mask.shape)}")
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return out.transpose(1, 2).flatten(2, 3).type_as(query)  # (B, L, heads·D)

    def _prope_branch(self, context: AttentionContext, query, key, value) -> torch.Tensor:
        """PRoPE (minWM / Li et al. 2025): q ↦ Pᵀq, k, v ↦ P⁻¹k, P⁻¹v, output ↦ P·out, on the
        normalised, un-rotated projections; cached K/V carry their own frames' P⁻¹."""
        prope = context.prope
        tpf = prope.tokens_per_frame
        query = apply_frame_transform(query, prope.projection.transpose(-1, -2), tpf)
        key = apply_frame_transform(key, prope.inverse, tpf)
        value = apply_frame_transform(value, prope.inverse, tpf)
        out = self._attend(context, query, key, value, "prope")  # (B, L, heads·D)
        heads = query.shape[1]
        out = apply_frame_transform(out.unflatten(2, (heads, -1)).transpose(1, 2), prope.projection, tpf)
        return prope.out_projections[self.layer_index](out.transpose(1, 2).flatten(2, 3))


class CachedCrossAttnProcessor:
    """Cross-attention whose prompt K/V come precomputed in a :class:`PromptState`."""

    def __init__(self, layer_index: int):
        self.layer_index = layer_index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if isinstance(encoder_hidden_states, PromptState):
            key = encoder_hidden_states.keys[self.layer_index]
            value = encoder_hidden_states.values[self.layer_index]
        else:  # stock forward: project the (already text-embedded) prompt here
            key, value = prompt_kv(attn, encoder_hidden_states)
        query = _heads_first(attn.norm_q(attn.to_q(hidden_states)), attn.heads)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def prompt_kv(attn, text_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (_heads_first(attn.norm_k(attn.to_k(text_tokens)), attn.heads),
            _heads_first(attn.to_v(text_tokens), attn.heads))


class CausalWan(CausalBackbone):
    """Wan2.1 T2V as a block-causal, streaming backbone (the adapter of docs/design.md §2, §4)."""

    def __init__(self, transformer: WanTransformer3DModel, prediction_type: str = "v",
                 conditioning: ConditioningConfig | None = None, residual_reference: bool = False,
                 residual_gate: int = 0, residual_smooth: float | None = None):
        super().__init__()
        config = transformer.config
        if tuple(config.patch_size)[0] != 1:
            raise ValueError(f"causal chunking needs a temporal patch of 1, the config has patch_size={config.patch_size}")
        if config.image_dim is not None or config.added_kv_proj_dim is not None:
            raise ValueError("image-conditioned Wan (I2V, image_dim/added_kv_proj_dim set) is not supported; "
                             "use a T2V config, start images enter through the KV cache")
        self.transformer = transformer
        self.prediction_type = check_prediction_type(prediction_type)
        # The output is added to a reference latent (the last clean frame before the chunk):
        # a small model then starts from "the scene as it was" and learns the change.
        self.residual_reference = residual_reference
        # residual_gate = G > 0: the output is scaled by 1 - validity pixel by pixel before it is
        # added to the reference, so pixels the warp saw come through unchanged and the network
        # draws only what it never saw. The reference is then [colours ; validity], packed as a
        # pixel latent packs them: G groups (frames) of 3·K colour channels and K validity channels.
        channels, extra = config.out_channels, config.in_channels - config.out_channels
        if residual_gate and not (residual_reference and extra == channels + channels // 3
                                  and channels % (3 * residual_gate) == 0):
            raise ValueError(f"residual_gate needs a residual model that takes its reference and validity as input "
                             f"({channels} + {channels // 3} channels beside the latent, in {residual_gate} groups); "
                             f"this one takes {extra} (residual_reference={residual_reference})")
        self.residual_gate = residual_gate
        # residual_smooth = σ: the output is low-passed in pixel space (a Gaussian of σ pixels)
        # before the gate. The network's correction of what the warp never saw comes a token at a
        # time, so unsmoothed it tiles a drawing with 8×8-pixel blocks of its own colours; the
        # colour it corrects towards passes, the tiling does not (docs/default_model.md, v6.1).
        self.residual_smooth = residual_smooth
        if residual_smooth is not None:
            if not residual_gate:
                raise ValueError("residual_smooth needs residual_gate (a pixel latent whose frames the gate groups)")
            if not (math.isfinite(residual_smooth) and residual_smooth > 0):
                raise ValueError(f"residual_smooth must be a positive number of pixels, got {residual_smooth}")
            factor = math.isqrt(channels // (3 * residual_gate))
            if 3 * residual_gate * factor * factor != channels:
                raise ValueError(f"residual_smooth needs a pixel latent of {residual_gate} frames of 3·f² channels, "
                                 f"got {channels} channels")
            radius = max(1, math.ceil(3 * residual_smooth))
            taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * residual_smooth ** 2))
            self.register_buffer("smooth_taps", taps / taps.sum(), persistent=False)
            self.pixel_factor = factor
        self.rotary = FramePositionRotary(config.attention_head_dim)
        self.gradient_checkpointing = False
        self.conditioning = None
        if conditioning is not None and (conditioning.uses_camera or conditioning.action_spec is not None):
            self.conditioning = Conditioning(conditioning, dim=config.num_attention_heads * config.attention_head_dim,
                                             num_layers=config.num_layers, head_dim=config.attention_head_dim,
                                             patch=self.spatial_patch)
        for i, block in enumerate(transformer.blocks):
            block.attn1.set_processor(CausalSelfAttnProcessor(i))
            block.attn2.set_processor(CachedCrossAttnProcessor(i))

    # -- sizes, all from the config -------------------------------------------------------
    @property
    def config(self):
        return self.transformer.config

    @property
    def latent_channels(self) -> int:
        return self.config.out_channels

    @property
    def reference_channels(self) -> int:
        """Input channels beyond the noisy latent: the reference (and its validity), which such
        a backbone sees beside the latent as well as adding its output to it (0: it only adds)."""
        return self.config.in_channels - self.config.out_channels

    def _gate(self, validity: torch.Tensor) -> torch.Tensor:
        """1 - validity (B, C / 3, F, h, w), spread over the three colours of every pixel → (B, C, F, h, w)."""
        batch, _, frames, height, width = validity.shape
        per_pixel = validity.reshape(batch, self.residual_gate, 1, -1, frames, height, width)
        return 1 - per_pixel.expand(-1, -1, 3, -1, -1, -1, -1).reshape(batch, self.latent_channels, frames, height, width)

    text_length = 512  # UMT5's max_sequence_length in diffusers' WanPipeline; Wan has no text mask
    folds_writes = True  # forward takes write_frames and a streaming frame_mask (ChunkStream folds clean writes)
    static_shapes = True  # attends a static cache (KVCache.static_step) and can compile its streaming forward

    @property
    def text_dim(self) -> int:
        """Width of the prompt embeddings :meth:`encode_prompt` takes (UMT5: 4096)."""
        return self.config.text_dim

    @property
    def spatial_patch(self) -> tuple[int, int]:
        return tuple(self.config.patch_size[1:])

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        ph, pw = self.spatial_patch
        if latent_height % ph or latent_width % pw:
            raise ValueError(f"latent size {latent_height}x{latent_width} is not divisible by the patch {ph}x{pw}")
        return (latent_height // ph) * (latent_width // pw)

    # -- conditioning ------------------------------------------------------------------------
    def null_prompt_embeds(self, batch_size: int) -> torch.Tensor:
        weight = self.transformer.condition_embedder.text_embedder.linear_1.weight
        return torch.zeros(batch_size, 1, self.config.text_dim, device=weight.device, dtype=weight.dtype)

    def fsdp_layout(self) -> tuple[list[nn.Module], set[nn.Parameter]]:
        """How FSDP shards this backbone: the units (every block; the backbone itself is the
        root) and the parameters that stay replicated, those :meth:`encode_prompt` uses
        outside any block's forward (text embedder, cross-attention K/V projections)."""
        blocks = list(self.transformer.blocks)
        replicated = set(self.transformer.condition_embedder.text_embedder.parameters())
        for block in blocks:
            for name in ("to_k", "to_v", "norm_k"):
                replicated |= set(getattr(block.attn2, name).parameters())
        return blocks, replicated

    def encode_prompt(self, prompt_embeds: torch.Tensor) -> PromptState:
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != self.config.text_dim:
            raise ValueError(f"prompt embeddings must be (B, L, {self.config.text_dim}), got {tuple(prompt_embeds.shape)}")
        text_tokens = self.transformer.condition_embedder.text_embedder(prompt_embeds)
        keys, values = zip(*(prompt_kv(block.attn2, text_tokens) for block in self.transformer.blocks))
        return PromptState(list(keys), list(values))

    def new_cache(self, *, batch_size: int, latent_height: int, latent_width: int, window_frames: int,
                  sink_frames: int, max_new_frames: int, memory_frames: int = 0, static: bool = False,
                  compile=None) -> KVCache:
        weight = self.transformer.patch_embedding.weight
        return KVCache(num_layers=self.num_layers, batch_size=batch_size, num_heads=self.config.num_attention_heads,
                       head_dim=self.config.attention_head_dim,
                       tokens_per_frame=self.tokens_per_frame(latent_height, latent_width),
                       window_frames=window_frames, sink_frames=sink_frames, max_new_frames=max_new_frames,
                       device=weight.device, dtype=weight.dtype,
                       streams=("main", "prope") if self.uses_prope else ("main",), memory_frames=memory_frames,
                       static=static, compile=compile)

    @property
    def conditioning_config(self) -> ConditioningConfig:
        return ConditioningConfig() if self.conditioning is None else self.conditioning.config

    @property
    def uses_prope(self) -> bool:
        return self.conditioning is not None and self.conditioning.prope_out is not None

    def _timestep_modulation(self, timestep: torch.Tensor, tokens_per_frame: int,
                             frame_embedding: torch.Tensor | None = None, uniform: bool | None = None):
        """(B, F) timesteps → the output-layer embedding and the blocks' modulation.

        A uniform timestep per sample uses diffusers' (B, 6, dim) form; mixed timesteps (per
        chunk noise levels) or per-frame action embeddings (added to the timestep embedding)
        expand per token, which the Wan block accepts as (B, L, 6, dim).
        """
        embedder = self.transformer.condition_embedder
        batch, num_frames = timestep.shape
        if uniform is None:
            uniform = self._uniform(timestep, frame_embedding)
        flat = timestep[:, 0] if uniform else timestep.reshape(-1)
        sinusoid = embedder.timesteps_proj(flat)
        time_dtype = next(embedder.time_embedder.parameters()).dtype
        temb = embedder.time_embedder(sinusoid.to(time_dtype)).to(self.transformer.patch_embedding.weight.dtype)
        if frame_embedding is not None:
            temb = temb + frame_embedding.reshape(batch * num_frames, -1).to(temb.dtype)
        modulation = embedder.time_proj(embedder.act_fn(temb)).unflatten(-1, (6, -1))
        if uniform:
            return temb, modulation  # (B, dim), (B, 6, dim)
        temb = temb.view(batch, num_frames, 1, -1).expand(-1, -1, tokens_per_frame, -1).flatten(1, 2)
        modulation = modulation.view(batch, num_frames, 1, 6, -1).expand(-1, -1, tokens_per_frame, -1, -1)
        return temb, modulation.flatten(1, 2)  # (B, L, dim), (B, L, 6, dim)

    @staticmethod
    def _uniform(timestep: torch.Tensor, frame_embedding: torch.Tensor | None) -> bool:
        """Whether every frame of a sample has the same timestep and no frame embedding."""
        # (Meta tensors, used to count FLOPs, cannot be compared: take the general path.)
        return frame_embedding is None and (timestep.shape[1] == 1 or (
            timestep.device.type != "meta" and bool((timestep == timestep[:, :1]).all())))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, frame_positions: torch.Tensor,
                prompt: PromptState, *, kv_cache: KVCache | None = None, cache_write: bool = False,
                frame_mask: torch.Tensor | None = None, conditions: FrameConditions | None = None,
                reference: torch.Tensor | None = None, write_frames: int | None = None) -> torch.Tensor:
        """See :meth:`CausalBackbone.forward`. In streaming mode ``frame_mask`` (F, C + F) may
        cover [the cache's C frames ; the forward's F] (rows in lockstep), and ``cache_write``
        with ``write_frames`` = n keeps only the first n frames: a clean write folded into a
        denoising forward (docs/design.md §6). A static cache (``KVCache(static=True)``, forwards
        without gradients) is attended through :meth:`KVCache.static_step`, built here, and its
        ``compile`` option runs the tensor part compiled (:func:`_transform`)."""
        batch, channels, num_frames, height, width = hidden_states.shape
        if self.residual_reference and reference is None and not cache_write:
            raise ValueError("this model predicts a residual on a reference frame: pass reference "
                             "(B, C, 1 or F, H, W), the last clean latent frame before each frame's chunk")
        model = self.transformer
        ph, pw = self.spatial_patch
        post_h, post_w = height // ph, width // pw
        tokens_per_frame = self.tokens_per_frame(height, width)
        if timestep.shape != (batch, num_frames):
            raise ValueError(f"timestep must be (B, F) = ({batch}, {num_frames}), got {tuple(timestep.shape)}")
        if frame_positions.shape != (num_frames,):
            raise ValueError(f"frame_positions must be ({num_frames},), got {tuple(frame_positions.shape)}")
        if prompt.batch_size != batch:
            raise ValueError(f"prompt batch {prompt.batch_size} does not match latent batch {batch}")

        branches = self.conditioning
        if branches is not None:
            branches.check(conditions, batch, num_frames)
        dtype = model.patch_embedding.weight.dtype

        freqs_cos, freqs_sin = self.rotary(frame_positions, post_h, post_w, hidden_states.device)
        mask = None if frame_mask is None else expand_frame_mask(frame_mask.to(hidden_states.device), tokens_per_frame)
        prope = None if branches is None else branches.prope_inputs(conditions, tokens_per_frame, dtype)
        # static mode: the masks and slots are built here, the forward below holds no bookkeeping
        step = getattr(kv_cache, "static_step", None)
        step = None if step is None else step(num_frames * tokens_per_frame, token_mask=mask,
                                              device=hidden_states.device)
        if step is None:
            context = AttentionContext(freqs_cos, freqs_sin, mask, kv_cache, cache_write, prope)
        else:
            context = AttentionContext(freqs_cos, freqs_sin, None, step, cache_write, prope)

        if self.reference_channels:
            # the reference enters beside the noisy latent; a clean write (no reference) sees zeros
            if reference is None:
                extra = hidden_states.new_zeros(batch, self.reference_channels, num_frames, height, width)
            else:
                if reference.shape[1] != self.reference_channels:
                    raise ValueError(f"this backbone takes a reference of {self.reference_channels} channels beside "
                                     f"the latent, got {reference.shape[1]}")
                extra = reference.to(hidden_states.dtype).expand(-1, -1, num_frames, -1, -1)
            hidden_states = torch.cat([hidden_states, extra], dim=1)
        rays = frame_embedding = None
        if branches is not None:
            rays = branches.token_embedding(conditions, height, width, dtype)
            frame_embedding = branches.frame_embedding(conditions, dtype)
        uniform = self._uniform(timestep, frame_embedding)
        residual = reference if self.residual_reference else None
        gate = None if residual is None or not self.residual_gate else self._gate(residual[:, self.latent_channels:])
        if step is None or step.compile is None:
            out = _transform(self, hidden_states, timestep, uniform, rays, frame_embedding, prompt, context, residual,
                             gate)
        else:
            out = _compiled_transform(step.compile)(self, hidden_states, timestep, uniform, rays, frame_embedding,
                                                    prompt, context, residual, gate)
            # with CUDA graphs the output lives in the graph's memory, overwritten by its next replay
            # (the sampler's next step): a latent-sized copy keeps it
            out = out.clone()
        if kv_cache is not None and cache_write:
            kv_cache.commit(frame_positions.tolist()[:write_frames])
        return out


def _transform(backbone: CausalWan, hidden_states, timestep, uniform: bool, rays, frame_embedding, prompt, context,
               reference, gate=None) -> torch.Tensor:
    """The tensor part of :meth:`CausalWan.forward` (patch embedding, blocks, output head): no
    bookkeeping, so with a static-mode context it compiles to one graph per forward shape. The
    output is added to ``reference``'s colour channels, first scaled by ``gate`` if given."""
    model = backbone.transformer
    batch, _, num_frames, height, width = hidden_states.shape
    ph, pw = backbone.spatial_patch
    post_h, post_w = height // ph, width // pw
    x = model.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # (B, L, dim)
    if rays is not None:
        x = x + rays
    temb, modulation = backbone._timestep_modulation(timestep, post_h * post_w, frame_embedding, uniform)
    for block in model.blocks:
        if backbone.gradient_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, prompt, modulation, context, use_reentrant=False)
        else:
            x = block(x, prompt, modulation, context)

    table = model.scale_shift_table  # (1, 2, dim)
    if temb.ndim == 3:
        shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).unbind(2)
    else:
        shift, scale = (table + temb.unsqueeze(1)).unbind(1)
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    x = (model.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    x = model.proj_out(x)  # (B, L, C·ph·pw)
    x = x.reshape(batch, num_frames, post_h, post_w, 1, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    out = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
    if backbone.residual_smooth is not None:
        out = _low_pass(out, backbone.smooth_taps.to(out.dtype), backbone.pixel_factor, backbone.residual_gate)
    if gate is not None:
        out = out * gate.to(out.dtype)
    if reference is not None:
        out = out + reference[:, :out.shape[1]].to(out.dtype)
    return out


def _blur_matrix(taps: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size): row i holds the kernel ``taps`` centred on i, taps past an edge added to
    the edge pixel (replicated edges), so ``matrix @ column`` blurs a column."""
    radius = (taps.shape[0] - 1) // 2
    index = (torch.arange(size, device=taps.device)[:, None] + torch.arange(-radius, radius + 1, device=taps.device))
    matrix = torch.zeros(size, size, dtype=taps.dtype, device=taps.device)
    return matrix.scatter_add_(1, index.clamp(0, size - 1), taps.expand(size, -1))


def _low_pass(latent: torch.Tensor, taps: torch.Tensor, factor: int, frames: int) -> torch.Tensor:
    """A pixel latent (B, frames·3·f², F, h, w) blurred in pixel space by the separable kernel
    ``taps`` (edges replicated): unpacked as the space-to-depth codec packs it
    (:meth:`~minwm_env.codec.SpaceToDepthCodec.pack`), blurred per colour, packed back. The blur
    is two small matrix products (rows, then columns): measured 15× faster on a CPU than the
    same kernel as a convolution of one-channel images, which CPU kernels run poorly."""
    batch, channels, num_frames, height, width = latent.shape
    per_frame = channels // frames
    x = latent.transpose(1, 2).reshape(batch * num_frames * frames, per_frame, height, width)
    x = F.pixel_shuffle(x, factor)  # (N, 3, H, W)
    x = _blur_matrix(taps, x.shape[-2]) @ x @ _blur_matrix(taps, x.shape[-1]).T
    x = F.pixel_unshuffle(x, factor)
    return x.reshape(batch, num_frames, channels, height, width).transpose(1, 2)


_COMPILED: dict = {}


def _compiled_transform(spec):
    """:func:`_transform` compiled as ``spec`` says (:func:`~minwm_env.backbones.base.compile_streaming`),
    once per spec: torch.compile's cache then holds a graph per forward shape."""
    if spec not in _COMPILED:
        _COMPILED[spec] = compile_streaming(_transform, spec)
    return _COMPILED[spec]
