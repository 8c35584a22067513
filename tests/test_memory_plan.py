"""The memory plan (benchmarks/memory_plan.py) and bf16 end to end (issue 24, item 3)."""

import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import memory_plan  # noqa: E402

from minwm_env.conditioning import ConditioningConfig  # noqa: E402
from minwm_env.generator import StreamingGenerator  # noqa: E402
from minwm_env.models import load_model  # noqa: E402


class Float32KV(TorchDispatchMode):
    """Records float32 tensors shaped like cached keys/values: (rows, heads, more tokens than a
    forward holds, head_dim), i.e. a float32 copy of the cache."""

    def __init__(self, heads: int, head_dim: int, new_tokens: int):
        super().__init__()
        self.heads, self.head_dim, self.new_tokens, self.found = heads, head_dim, new_tokens, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.ndim == 4 and t.shape[1] == self.heads
                    and t.shape[3] == self.head_dim and t.shape[2] > self.new_tokens):
                self.found.append((str(func), tuple(t.shape)))
        return out


def _bf16_stream():
    model = load_model("tiny", dtype=torch.bfloat16, conditioning=ConditioningConfig(camera="prope"))
    generator = StreamingGenerator(model)
    return model, generator


def test_bf16_end_to_end_on_a_tiny_stream():
    """Weights, cache buffers (both streams), latents and decoded frames stay bf16; no float32
    copy of the cache is made; outputs are finite; the plan's formula is the cache's nbytes."""
    model, generator = _bf16_stream()
    keep = set(model.backbone.transformer._keep_in_fp32_modules or [])
    for part in (model.backbone.transformer, model.backbone.conditioning, model.codec.module):
        for name, param in part.named_parameters():
            kept = part is model.backbone.transformer and any(p in keep for p in name.split("."))
            assert param.dtype == (torch.float32 if kept else torch.bfloat16), name
    assert list(generator.cache.streams) == ["main", "prope"]
    config = model.backbone.transformer.config
    tokens = generator.cache.tokens_per_frame * generator.cache.max_new_frames
    watch = Float32KV(config.num_attention_heads, config.attention_head_dim, tokens)
    image = torch.zeros(1, 3, model.settings.height, model.settings.width)
    first = generator.reset(seed=0, image=image)
    actions = torch.zeros(1, generator.chunk_frames, 6)
    outs = [generator.next_chunk(actions)]  # one decoded chunk (a bf16 VAE decode is slow on the CPU)
    with watch:  # the forwards (plain, folded with the last chunk's write), not the VAE (slow under the mode)
        latents = [generator.next_chunk(actions, decode=False).latents for _ in range(2)]
    assert watch.found == [] and all(x.dtype == torch.bfloat16 and torch.isfinite(x.float()).all() for x in latents)
    for keys, values in generator.cache.streams.values():
        assert all(t.dtype == torch.bfloat16 for t in keys + values)
    assert first.dtype == torch.bfloat16 and torch.isfinite(first.float()).all()
    for out in outs:
        assert out.latents.dtype == torch.bfloat16 and out.frames.dtype == torch.bfloat16
        assert torch.isfinite(out.latents.float()).all() and torch.isfinite(out.frames.float()).all()
    assert memory_plan.cache_formula(generator.cache) == generator.cache.nbytes()


def test_plan_of_the_tiny_preset_matches_the_real_model():
    """On meta: the weights equal the real tiny model's parameter bytes and the cache the real
    bf16 stream's KVCache.nbytes()."""
    plan = memory_plan.plan("tiny", camera="prope")
    model, generator = _bf16_stream()
    real = sum(p.numel() * p.element_size()
               for part in (model.backbone.transformer, model.backbone.conditioning, model.codec.module)
               for p in list(part.parameters()) + list(part.buffers()))
    assert plan["weights_bytes"] == real
    assert plan["cache_bytes"] == plan["cache_formula_bytes"] == generator.cache.nbytes()
    assert plan["cache_streams"] == ["main", "prope"] and plan["max_new_frames"] == 2 * plan["chunk_frames"]
    assert plan["vae_decode_state_bytes"] > 0 and plan["denoise_transient_bytes"] > 0
    assert plan["total_bytes"] > plan["weights_bytes"] + plan["cache_bytes"]


def test_plan_of_wan21_on_meta():
    """The full-size preset on meta (a short window keeps it quick): a 1.4B transformer in bf16,
    PRoPE's cache stream as large as the main one, the formula equal to KVCache.nbytes()."""
    plan = memory_plan.plan("wan21-1.3b", window_frames=4, detail=False)
    assert plan["camera"] == "prope" and plan["cache_streams"] == ["main", "prope"]
    assert plan["tokens_per_frame"] == 30 * 52 and plan["max_new_frames"] == 8
    transformer = plan["weights"]["transformer"]
    assert transformer["bfloat16"]["numel"] > 1.4e9 and transformer["float32"]["numel"] < 5e6
    # 2 streams x 30 layers x (K, V) x 12 heads x (4 + 8) frames x 1560 tokens x 128 x 2 bytes
    assert plan["cache_bytes"] == plan["cache_formula_bytes"] == 2 * 30 * 2 * 12 * 12 * 1560 * 128 * 2
    assert 1 * 2**30 < plan["vae_decode_state_bytes"] < 3 * 2**30
    assert plan["denoise_transient"][1]["folded"] and not plan["denoise_transient"][0]["folded"]
