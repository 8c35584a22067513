"""GPU memory plan of the streaming env at full size, computed on meta tensors (no weights, no GPU).

    python benchmarks/memory_plan.py                       # wan21-1.3b, 480x832, bf16, PRoPE, the env's stream
    python benchmarks/memory_plan.py --preset tiny --json plan.json

The model is built on the meta device (shapes and dtypes, no data) and cast as ``load_model``
casts it; its stream is the env's (batch 1, the settings' chunk/window/sink, folded clean writes,
so the cache holds two chunks of new frames; a "prope" cache stream when the camera branch is
PRoPE, as the training preset's is). Then:

(a) weights: every parameter and buffer of the transformer, the conditioning branches and the
    VAE, by dtype (equal to ``sum(p.numel())`` over the same modules, checked);
(b) the KV cache: the ``KVCache`` the stream allocates, on meta, its ``nbytes()``, checked
    against :func:`cache_bytes` (the formula);
(c) activations: a few chunks are streamed on meta tensors under a dispatch mode that counts
    the bytes of every tensor storage from its creation to its release (:class:`LiveBytes`),
    so the transient peak of a denoising forward (plain, and folded with the previous chunk's
    clean write) is what eager PyTorch holds at its worst moment. Assumption: attention is a
    memory-efficient kernel (flash / mem-efficient SDPA: output + float32 logsumexp, and a
    boolean mask converted to an additive one of the query's dtype), stood in for by
    :func:`efficient_sdpa`; the largest terms are also listed analytically;
(d) the streaming VAE decode: its causal-conv state (every ``feat_cache`` entry) and the
    transient peak of decoding one chunk (our stream decodes one latent frame at a time,
    so a chunk costs what one latent frame → 4 RGB frames costs), plus the largest conv
    activation of each decoder stage from the shapes the decoder really produced;
(e) the total against the budget (16 GiB), for the env's stream and for variants that cut the
    cache (separate clean writes: two chunks of new frames become one; shorter windows).

Not counted: the CUDA context and cuBLAS/cuDNN workspaces (~0.5-1 GiB), the caching
allocator's fragmentation, and the text encoder (UMT5, used once per episode before the
stream starts; keep it off the GPU or free it). Computed, not measured on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import weakref
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from minwm_env import conditioning as conditioning_module
from minwm_env.conditioning import ConditioningConfig, FrameConditions
from minwm_env.models import PRESETS, build_preset

GIB = 2 ** 30
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# -- counting -----------------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created under it and still alive: ``live`` now, ``peak`` at worst.

    Every op's outputs are looked at; a storage not seen before and not one of the op's inputs'
    (a view, an in-place result) is counted from then until Python releases it (a finalizer on
    the storage). Storages made before the mode (weights, the KV cache) are never counted."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self._sizes or key in inputs:
                continue
            self._sizes[key] = storage.nbytes()
            self.live += self._sizes[key]
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def window(self) -> "_Window":
        """The transient of what follows: ``with tracker.window() as w: ...; w.extra`` = peak − live before."""
        return _Window(self)


class _Window:
    def __init__(self, tracker: LiveBytes):
        self.tracker = tracker

    def __enter__(self):
        self.before = self.tracker.live
        self.saved_peak = self.tracker.peak
        self.tracker.peak = self.tracker.live
        return self

    def __exit__(self, *exc):
        self.extra = self.tracker.peak - self.before
        self.tracker.peak = max(self.tracker.peak, self.saved_peak)


def efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """What a memory-efficient attention kernel allocates (the output, a float32 logsumexp and,
    for a boolean mask, its additive form in the query's dtype), without computing anything:
    meta tensors would otherwise take the math path, which materialises every score."""
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    query.new_empty(query.shape[:-1], dtype=torch.float32)  # logsumexp (kept for backward; freed here)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # torch converts a boolean mask at its own shape (then broadcasts it as a view)
        inverted = attn_mask.logical_not()
        additive = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill_(inverted, float("-inf"))
        del inverted, additive
    return out


@contextlib.contextmanager
def meta_streaming():
    """Patches that let a stream run on meta tensors: the memory-efficient attention stand-in and
    PRoPE's camera matrices (made from the poses on the CPU; meta poses have no values, so an
    identity camera stands in: only shapes matter here)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    prope_inputs = conditioning_module.Conditioning.prope_inputs

    def meta_prope_inputs(self, conditions, tokens_per_frame, dtype):
        if conditions is None or conditions.w2c is None or conditions.w2c.device.type != "meta":
            return prope_inputs(self, conditions, tokens_per_frame, dtype)
        batch, frames = conditions.w2c.shape[:2]
        cpu = FrameConditions(torch.eye(4, dtype=torch.float64).repeat(batch, frames, 1, 1),
                              torch.full((batch, frames, 4), 0.5, dtype=torch.float64))
        inputs = prope_inputs(self, cpu, tokens_per_frame, dtype)
        return replace(inputs, projection=inputs.projection.to("meta"), inverse=inputs.inverse.to("meta"))

    torch.nn.functional.scaled_dot_product_attention = efficient_sdpa
    conditioning_module.Conditioning.prope_inputs = meta_prope_inputs
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        conditioning_module.Conditioning.prope_inputs = prope_inputs


# -- the pieces ---------------------------------------------------------------------------------
def meta_model(preset: str, dtype: torch.dtype, camera: str):
    """The preset built on the meta device and cast as ``load_model(..., dtype=dtype)`` casts it."""
    branches = ConditioningConfig(camera=camera) if camera != "none" else None
    with torch.device("meta"):
        model = build_preset(preset, conditioning=branches)
    return model.to(dtype=dtype)


def weight_bytes(model) -> dict:
    """Parameters and buffers of each part, by dtype: {part: {dtype: {"numel", "bytes"}}}."""
    parts = {"transformer": model.backbone.transformer, "conditioning": model.backbone.conditioning,
             "vae": model.codec.module}
    out: dict = {}
    for part, module in parts.items():
        if module is None:
            continue
        by_dtype: dict = {}
        for tensor in list(module.parameters()) + list(module.buffers()):
            entry = by_dtype.setdefault(str(tensor.dtype).removeprefix("torch."), {"numel": 0, "bytes": 0})
            entry["numel"] += tensor.numel()
            entry["bytes"] += tensor.numel() * tensor.element_size()
        out[part] = by_dtype
    return out


def cache_bytes(*, num_layers: int, rows: int, num_heads: int, head_dim: int, tokens_per_frame: int,
                memory_frames: int, sink_frames: int, window_frames: int, max_new_frames: int, num_streams: int,
                element_size: int) -> int:
    """What :class:`~minwm_env.backbones.base.KVCache` allocates: per stream, per layer, a key and
    a value buffer of (rows, heads, capacity tokens, head_dim)."""
    capacity = (memory_frames + sink_frames + window_frames + max_new_frames) * tokens_per_frame
    return num_streams * num_layers * 2 * rows * num_heads * capacity * head_dim * element_size


def cache_formula(cache) -> int:
    keys = next(iter(cache.streams.values()))[0]
    rows, heads, _, head_dim = keys[0].shape
    return cache_bytes(num_layers=cache.num_layers, rows=rows, num_heads=heads, head_dim=head_dim,
                       tokens_per_frame=cache.tokens_per_frame, memory_frames=cache.memory_frames,
                       sink_frames=cache.sink_frames, window_frames=cache.window_frames,
                       max_new_frames=cache.max_new_frames, num_streams=len(cache.streams),
                       element_size=keys[0].element_size())


def largest_terms(model, stream, element_size: int) -> dict:
    """The largest tensors of one block of a folded forward (2 chunks: the previous chunk's clean
    write in front of the noisy one) with the window full, analytically, in bytes."""
    config = model.backbone.transformer.config
    dim = config.num_attention_heads * config.attention_head_dim
    tpf = stream.cache.tokens_per_frame
    new = stream.cache.max_new_frames * tpf  # query tokens of the folded forward
    keys = (stream.cache.sink_frames + stream.cache.window_frames) * tpf + new
    rows = stream.cache.batch_size
    return {
        "hidden_states": rows * new * dim * element_size,
        "q_k_v": 3 * rows * new * dim * element_size,
        "ffn_hidden": rows * new * config.ffn_dim * element_size,
        "token_mask_bool": new * keys,
        "token_mask_additive": new * keys * element_size,
        "modulation_per_token": rows * new * 6 * dim * element_size,
        "modulation_per_token_float32": rows * new * 6 * dim * 4,
    }


def decoder_stages(model, latent_shape, dtype) -> dict:
    """Largest conv activation (input + output bytes) of each decoder stage while one chunk decodes."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
    decoder = getattr(model.codec, "vae", None)
    if decoder is None or not hasattr(decoder, "decoder"):
        return {}
    stages: dict = {}
    hooks = []

    def record(name):
        stage = name.split(".")[0] if not name.startswith("up_blocks") else ".".join(name.split(".")[:2])

        def hook(module, inputs, output):
            size = sum(t.numel() * t.element_size() for t in (inputs[0], output))
            if size > stages.get(stage, {}).get("bytes", 0):
                stages[stage] = {"bytes": size, "input": list(inputs[0].shape), "output": list(output.shape),
                                 "conv": name}
        return hook

    for name, module in decoder.decoder.named_modules():
        if isinstance(module, WanCausalConv3d):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        stream = model.codec.stream()
        stream.push(torch.zeros(*latent_shape[:2], 1, *latent_shape[3:], device="meta", dtype=dtype))
        stream.push(torch.zeros(latent_shape, device="meta", dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return stages


def decoder_state_bytes(decoder_stream) -> int:
    state = getattr(decoder_stream, "_feat_cache", None) or []
    return sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor))


def plan(preset: str = "wan21-1.3b", *, dtype: torch.dtype = torch.bfloat16, camera: str | None = None,
         batch_size: int = 1, num_branches: int = 1, window_frames: int | None = None,
         sink_frames: int | None = None, chunk_frames: int | None = None, fold_writes: bool = True,
         budget_gib: float = 16.0, detail: bool = True) -> dict:
    """The memory plan of one stream (see the module doc); sizes in bytes."""
    from minwm_env.generator import StreamingGenerator
    from minwm_env.samplers import FewStepSampler
    from minwm_env.streaming import ChunkStream

    if camera is None:
        camera = default_camera(preset)
    model = meta_model(preset, dtype, camera)
    settings = model.settings
    weights = weight_bytes(model)
    weights_total = sum(e["bytes"] for part in weights.values() for e in part.values())
    numel = sum(e["numel"] for part in weights.values() for e in part.values())
    modules = [m for m in (model.backbone.transformer, model.backbone.conditioning, model.codec.module) if m is not None]
    assert numel == sum(p.numel() for m in modules for p in list(m.parameters()) + list(m.buffers()))

    # One step per chunk: the first step of a chunk is the only one that may carry the folded
    # write, the later ones repeat a plain forward, so more steps change nothing here but time.
    sampler = FewStepSampler(timesteps=(1000.0,), shift=settings.shift,
                             guidance_scale=1.0 if num_branches == 1 else 5.0)
    original_init = ChunkStream.__init__

    def init(self, *args, **kwargs):  # the generator builds its stream with the fold asked for here
        original_init(self, *args, **{**kwargs, "fold_writes": fold_writes})

    ChunkStream.__init__ = init
    try:
        generator = StreamingGenerator(model, sampler, batch_size=batch_size, chunk_frames=chunk_frames,
                                       window_frames=window_frames, sink_frames=sink_frames)
    finally:
        ChunkStream.__init__ = original_init
    stream, cache = generator.stream, generator.cache
    cache_total = cache.nbytes()
    formula = cache_formula(cache)
    assert formula == cache_total, (formula, cache_total)

    c, f, h, w = stream.latent_shape
    start = torch.zeros(batch_size, c, 1, h, w, device="meta", dtype=model.dtype)
    # enough chunks for the window to fill (the folded forward's mask is then at its widest)
    chunks = math.ceil((cache.sink_frames + cache.window_frames) / stream.chunk_frames) + 2
    tracker = LiveBytes()
    denoise, decode = [], []
    with meta_streaming(), tracker:
        text = getattr(model.backbone, "text_length", None) or 512  # a full-length prompt (Wan: UMT5's 512)
        embeds = torch.zeros(batch_size, text, model.backbone.text_dim, device="meta", dtype=model.dtype)
        generator.reset(seed=0, start_latents=start, decode=False, prompt_embeds=embeds,
                        negative_prompt_embeds=embeds if num_branches == 2 else None)
        prompt = sum(t.numel() * t.element_size() for t in stream.prompt.keys + stream.prompt.values)
        for index in range(chunks):
            folded = stream.fold_writes and stream._pending is not None
            with tracker.window() as window:
                out = generator.next_chunk(decode=False)
            denoise.append({"chunk": index, "folded": bool(folded), "bytes": window.extra})
            if index < 3 or index == chunks - 1:  # the decoder's transient is the same from the second chunk on
                with tracker.window() as window:
                    generator._decoder.push(out.latents)
                decode.append({"chunk": index, "bytes": window.extra})
        state = decoder_state_bytes(generator._decoder)
        run_peak = tracker.peak
    stages = decoder_stages(model, (batch_size, c, f, h, w), model.dtype) if detail else {}

    denoise_peak = max(d["bytes"] for d in denoise)
    decode_peak = max(d["bytes"] for d in decode[1:] or decode)  # steady chunks (the first starts the state)
    rest = run_peak - state - prompt  # whichever transient was worst, with the chunk latents and bookkeeping
    total = weights_total + cache_total + run_peak
    element = torch.empty((), dtype=dtype).element_size()
    return {
        "preset": preset, "dtype": str(dtype).removeprefix("torch."), "camera": camera,
        "height": settings.height, "width": settings.width, "latent": [h, w],
        "batch_size": batch_size, "num_branches": num_branches, "chunk_frames": stream.chunk_frames,
        "window_frames": cache.window_frames, "sink_frames": cache.sink_frames,
        "max_new_frames": cache.max_new_frames, "fold_writes": stream.fold_writes,
        "tokens_per_frame": cache.tokens_per_frame, "cache_streams": list(cache.streams),
        "weights": weights, "weights_bytes": weights_total, "weights_numel": numel,
        "cache_bytes": cache_total, "cache_formula_bytes": formula,
        "cache_bytes_per_frame": cache_total // (cache.capacity // cache.tokens_per_frame),
        "prompt_state_bytes": prompt,
        "denoise_transient": denoise, "denoise_transient_bytes": denoise_peak,
        "largest_terms_folded_block": largest_terms(model, stream, element),
        "vae_decode_state_bytes": state, "vae_decode_transient": decode, "vae_decode_transient_bytes": decode_peak,
        "vae_decoder_stages": stages,
        "worst_transient_bytes": rest,
        "total_bytes": total, "budget_gib": budget_gib, "fits": total <= budget_gib * GIB,
        "assumptions": ("memory-efficient attention (output + float32 logsumexp + a boolean mask's additive copy); "
                        "eager PyTorch, tensors freed when Python releases them; no CUDA context, workspaces, "
                        "allocator fragmentation or text encoder; computed on meta tensors, not measured on a GPU"),
    }


def default_camera(preset: str) -> str:
    """The camera branch the preset's training recipe adds (minwm_train.config.PRESETS), else none."""
    try:
        from minwm_train.config import PRESETS as TRAIN_PRESETS
    except ImportError:
        return "none"
    return TRAIN_PRESETS.get(preset, {}).get("all", {}).get("camera", "none")


VARIANTS = (  # (name, overrides): what could make the env's stream fit
    ("env stream (folded writes)", {}),
    ("separate clean writes", {"fold_writes": False}),
    ("window 12", {"window_frames": 12}),
    ("window 12, separate writes", {"window_frames": 12, "fold_writes": False}),
    ("window 8", {"window_frames": 8}),
    ("window 8, separate writes", {"window_frames": 8, "fold_writes": False}),
    ("no camera branch", {"camera": "none"}),
    ("latency.py's CFG run, no camera", {"camera": "none", "num_branches": 2}),
)


def gib(value: float) -> str:
    return f"{value / GIB:6.2f}"


def table(main: dict, variants: list[tuple[str, dict]]) -> str:
    weights = main["weights"]
    lines = [f"memory plan — {main['preset']} {main['height']}x{main['width']}, {main['dtype']}, camera "
             f"{main['camera']}, batch {main['batch_size']} x {main['num_branches']} branch(es), chunk "
             f"{main['chunk_frames']}, window {main['window_frames']}, sink {main['sink_frames']}, cache "
             f"{main['max_new_frames']} new frames, streams {main['cache_streams']} (GiB; computed on meta tensors)"]
    for part, by_dtype in weights.items():
        detail = ", ".join(f"{k} {v['numel'] / 1e6:.1f}M" for k, v in by_dtype.items())
        lines.append(f"  weights {part:34s} {gib(sum(v['bytes'] for v in by_dtype.values()))}  ({detail})")
    lines += [
        f"  {'KV cache (= KVCache.nbytes())':42s} {gib(main['cache_bytes'])}  "
        f"({main['cache_bytes_per_frame'] / 2**20:.0f} MiB per cached frame)",
        f"  {'prompt K/V (per episode)':42s} {gib(main['prompt_state_bytes'])}",
        f"  {'VAE decode state (causal-conv cache)':42s} {gib(main['vae_decode_state_bytes'])}",
        f"  {'denoising forward, transient (worst chunk)':42s} {gib(main['denoise_transient_bytes'])}",
        f"  {'VAE decode of a chunk, transient':42s} {gib(main['vae_decode_transient_bytes'])}",
        f"  {'total (weights + cache + worst moment)':42s} {gib(main['total_bytes'])}  vs {main['budget_gib']:.0f} "
        f"GiB: {'fits' if main['fits'] else 'does not fit'}",
    ]
    if variants:
        lines.append(f"  {'variant':42s} {'cache':>6s} {'total':>6s}  fits")
        for name, result in variants:
            lines.append(f"  {name:42s} {gib(result['cache_bytes'])} {gib(result['total_bytes'])}  "
                         f"{'yes' if result['fits'] else 'no'}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="wan21-1.3b", choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--camera", default=None, choices=["none", "prope", "plucker"],
                        help="camera branch (default: the preset's training recipe's)")
    parser.add_argument("--window-frames", type=int, default=None)
    parser.add_argument("--budget-gib", type=float, default=16.0)
    parser.add_argument("--no-variants", action="store_true", help="the env's stream alone")
    parser.add_argument("--json", default=None, help="also write the plan to this file")
    args = parser.parse_args(argv)
    common = dict(dtype=DTYPES[args.dtype], budget_gib=args.budget_gib)
    main_plan = plan(args.preset, camera=args.camera, window_frames=args.window_frames, **common)
    variants = []
    if not args.no_variants:
        for name, overrides in VARIANTS[1:]:
            overrides = {"camera": main_plan["camera"], "window_frames": args.window_frames, **overrides}
            variants.append((name, plan(args.preset, detail=False, **common, **overrides)))
    from minwm_env.profiling import now_utc
    print(table(main_plan, variants))
    out = {"date": now_utc(), "command": "python benchmarks/memory_plan.py " + " ".join(argv or []),
           "plan": main_plan, "variants": {name: v for name, v in variants}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
