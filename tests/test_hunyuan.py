"""The causal HunyuanVideo-1.5 adapter: equal to diffusers where it should be, causal where it must be."""

import copy
import math

import pytest
import torch
from diffusers import HunyuanVideo15Transformer3DModel

from conftest import randomize_
from minwm_env import camera
from minwm_env.backbones import causal_frame_mask
from minwm_env.backbones.hunyuan import CausalHunyuan15, HunyuanPromptState, HunyuanRotary
from minwm_env.conditioning import ConditioningConfig, FrameConditions, camera_action_spec

# The smallest sizes the class takes comfortably: 4 latent channels (+4 conditioning +1 mask),
# 2 heads of 16 (RoPE split 4 time, 6 height, 6 width), 2 layers, 1 refiner layer.
TINY = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
            num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, text_embed_dim=24, text_embed_2_dim=20,
            image_embed_dim=12, rope_axes_dim=(4, 6, 6))
TOL = dict(atol=1e-5, rtol=0)


def make_transformer(seed=0, **overrides):
    torch.manual_seed(seed)
    return HunyuanVideo15Transformer3DModel(**{**TINY, **overrides}).eval()


def make_backbone(seed=0, conditioning=None, transformer_overrides=None, **kwargs):
    return CausalHunyuan15(make_transformer(seed, **(transformer_overrides or {})), conditioning=conditioning,
                           **kwargs).eval()


def text_inputs(batch=2, seed=0):
    """Qwen and ByT5 embeddings with padding in some rows (mask 0), as the stock pipeline makes them."""
    g = torch.Generator().manual_seed(seed)
    qwen, byt5 = torch.randn(batch, 5, 24, generator=g), torch.randn(batch, 3, 20, generator=g)
    qwen_mask, byt5_mask = torch.ones(batch, 5), torch.ones(batch, 3)
    qwen_mask[-1, 3:] = 0
    byt5_mask[0, 2:] = 0
    return qwen, qwen_mask, byt5, byt5_mask


def stock_forward(model, x, t, cond, text):
    qwen, qwen_mask, byt5, byt5_mask = text
    image = torch.zeros(x.shape[0], 4, 12)  # all zero: the stock model masks them (t2v)
    return model(torch.cat([x, cond], 1), t, qwen, qwen_mask, encoder_hidden_states_2=byt5,
                 encoder_attention_mask_2=byt5_mask, image_embeds=image).sample


def test_installing_processors_leaves_the_stock_forward_unchanged():
    model = make_transformer()
    wrapped = copy.deepcopy(model)
    CausalHunyuan15(wrapped)
    assert all(type(b.attn.processor).__name__ == "CausalJointAttnProcessor" for b in wrapped.transformer_blocks)
    x, t, cond = torch.randn(2, 4, 3, 4, 4), torch.tensor([100.0, 900.0]), torch.randn(2, 5, 3, 4, 4)
    with torch.no_grad():
        before = stock_forward(model, x, t, cond, text_inputs())
        after = stock_forward(wrapped, x, t, cond, text_inputs())
    torch.testing.assert_close(after, before, atol=0, rtol=0)


@pytest.mark.parametrize("image_start,t,patch", [(False, 370.0, 1), (True, 0.0, 1), (False, 640.0, 2)])
def test_one_layer_adapter_equals_stock_forward(image_start, t, patch):
    """With one block, the stock text stream's attention to video cannot reach the video output,
    so at the text timestep of the frames and full attention the adapter computes exactly the
    stock function: refiner, ByT5 and type embeddings, key masks, per-frame modulation, RoPE,
    joint attention, output layer and the conditioning channels' layout."""
    size = 4 * patch
    backbone = make_backbone(seed=2, transformer_overrides=dict(num_layers=1, patch_size=patch),
                             image_start=image_start, text_timestep=t)
    torch.manual_seed(1)
    x, text = torch.randn(2, 4, 3, size, size), text_inputs()
    cond = torch.zeros(2, 5, 3, size, size)
    if image_start:
        cond[:, :4, 0], cond[:, 4, 0] = x[:, :, 0], 1.0  # the start image in frame 0's conditioning, mask 1
    with torch.no_grad():
        reference = stock_forward(backbone.transformer, x, torch.full((2,), t), cond, text)
        prompt = backbone.encode_prompt(text[0], text[1], byt5_embeds=text[2], byt5_mask=text[3])
        ours = backbone(x, torch.full((2, 3), t), torch.arange(3), prompt)
    torch.testing.assert_close(ours, reference, **TOL)
    assert reference.abs().max() > 1e-2  # not a comparison of zeros


def test_rotary_matches_diffusers_table_and_the_closed_form_beyond():
    backbone = make_backbone()
    cos, sin = backbone.rotary(torch.arange(5), 3, 4)
    ref_cos, ref_sin = backbone.transformer.rope(torch.zeros(1, 9, 5, 3, 4))
    torch.testing.assert_close(cos[0, :, 0], ref_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0, :, 0], ref_sin, atol=1e-6, rtol=0)
    position = 123456  # far beyond any clip: computed from the position, no table
    cos, sin = HunyuanRotary((4, 6, 6), 256.0)(torch.tensor([position]), 1, 1)
    angles = [position / 256.0 ** (2 * i / 4) for i in range(2)]
    torch.testing.assert_close(cos[0, 0, 0, :4], torch.tensor([math.cos(a) for a in angles for _ in range(2)]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0, 0, 0, :4], torch.tensor([math.sin(a) for a in angles for _ in range(2)]),
                               atol=1e-6, rtol=0)
    assert torch.all(cos[0, 0, 0, 4:] == 1) and torch.all(sin[0, 0, 0, 4:] == 0)  # spatial axes at 0


def test_per_frame_timesteps_equal_separate_forwards_under_a_block_diagonal_mask():
    backbone = make_backbone(image_start=False)
    x = torch.randn(1, 4, 4, 4, 4)
    blocks = torch.tensor([0, 0, 1, 1])
    timestep = torch.tensor([[200.0, 200.0, 800.0, 800.0]])
    with torch.no_grad():
        prompt = backbone.encode_prompt(torch.randn(1, 3, 24))
        joint = backbone(x, timestep, torch.arange(4), prompt, frame_mask=blocks[:, None] == blocks[None, :])
        first = backbone(x[:, :, :2], timestep[:, :2], torch.arange(2), prompt)
        second = backbone(x[:, :, 2:], timestep[:, 2:], torch.arange(2, 4), prompt)
    torch.testing.assert_close(joint, torch.cat([first, second], dim=2), **TOL)
    assert (first - second).abs().max() > 1e-3


def _teacher_forcing_layout(prefix, clean, noisy, t_noisy, chunk, window=None, sink=0):
    """[prefix ; clean chunks ; noisy chunks] with the stage-1 mask (prefix: the start frame)."""
    batch, _, num_frames = clean.shape[:3]
    num_prefix = 0 if prefix is None else prefix.shape[2]
    clean_all = clean if prefix is None else torch.cat([prefix, clean], dim=2)
    positions = torch.arange(num_prefix + num_frames)
    blocks = torch.cat([torch.zeros(num_prefix, dtype=torch.long), torch.arange(num_frames) // chunk + 1])
    x = torch.cat([clean_all, noisy], dim=2)
    timestep = torch.cat([torch.zeros(batch, num_prefix + num_frames), t_noisy], dim=1)
    all_positions = torch.cat([positions, positions[num_prefix:]])
    is_noisy = torch.cat([torch.zeros(num_prefix + num_frames, dtype=torch.bool), torch.ones(num_frames, dtype=torch.bool)])
    mask = causal_frame_mask(all_positions, torch.cat([blocks, blocks[num_prefix:]]), noisy=is_noisy,
                             window_frames=window, sink_frames=sink)
    return x, timestep, all_positions, mask, num_prefix + num_frames


@pytest.mark.parametrize("with_start", [False, True])
@pytest.mark.parametrize("window,sink", [(None, 0), (2, 1), (1, 2)])
def test_streaming_with_cache_equals_full_block_causal_forward(with_start, window, sink):
    """Clean writes of earlier chunks, then the next chunk denoised against the cache, equal one
    masked full-sequence forward; with a window of 1-2 frames over 3 chunks of 2 frames, frames
    are evicted (and the sinks kept) before the last chunks."""
    backbone = make_backbone(seed=1, image_start=with_start)
    batch, chunk, num_chunks = 2, 2, 3
    n = chunk * num_chunks
    torch.manual_seed(3)
    start = torch.randn(batch, 4, 1, 4, 4) if with_start else None
    clean, noisy = torch.randn(batch, 4, n, 4, 4), torch.randn(batch, 4, n, 4, 4)
    t_noisy = (torch.rand(batch, num_chunks) * 1000).repeat_interleave(chunk, dim=1)
    qwen, qwen_mask, byt5, byt5_mask = text_inputs(batch)
    with torch.no_grad():
        prompt = backbone.encode_prompt(qwen, qwen_mask, byt5_embeds=byt5, byt5_mask=byt5_mask)
        x, timestep, positions, mask, split = _teacher_forcing_layout(start, clean, noisy, t_noisy, chunk, window, sink)
        full = backbone(x, timestep, positions, prompt, frame_mask=mask)[:, :, split:]

        cache = backbone.new_cache(batch_size=batch, latent_height=4, latent_width=4, window_frames=window or 1000,
                                   sink_frames=sink, max_new_frames=chunk)
        offset = 0
        if with_start:
            backbone(start, torch.zeros(batch, 1), torch.tensor([0]), prompt, kv_cache=cache, cache_write=True)
            offset = 1
        outputs = []
        for c in range(num_chunks):
            frames = slice(c * chunk, (c + 1) * chunk)
            pos = torch.arange(offset + c * chunk, offset + (c + 1) * chunk)
            outputs.append(backbone(noisy[:, :, frames], t_noisy[:, frames], pos, prompt, kv_cache=cache))
            backbone(clean[:, :, frames], torch.zeros(batch, chunk), pos, prompt, kv_cache=cache, cache_write=True)
        unmasked = backbone(x, timestep, positions, prompt)[:, :, split:]
    streamed = torch.cat(outputs, dim=2)
    torch.testing.assert_close(streamed, full, **TOL)
    assert (streamed - unmasked).abs().max() > 1e-3  # the mask matters: the equality is not trivial
    if window is not None:  # the cache did evict: it holds the sinks and the window only
        kept = list(range(offset + n))
        assert cache.frame_positions == kept[:sink] + kept[sink:][-window:]


def test_text_stream_is_computed_once_per_episode():
    """Chunks read the prompt state: no text projection, refiner or embedder runs after
    encode_prompt, however many chunks stream; and the state is really read (another prompt
    gives another output)."""
    backbone = make_backbone(image_start=True)
    model = backbone.transformer
    calls = {"text": 0}

    def count(*_):
        calls["text"] += 1

    text_modules = [model.context_embedder, model.context_embedder_2, model.image_embedder]
    text_modules += [m for b in model.transformer_blocks for m in (b.attn.add_q_proj, b.attn.add_k_proj, b.attn.add_v_proj)]
    hooks = [m.register_forward_hook(count) for m in text_modules]
    try:
        with torch.no_grad():
            prompt = backbone.encode_prompt(torch.randn(1, 4, 24), byt5_embeds=torch.randn(1, 2, 20),
                                            image_embeds=torch.randn(1, 3, 12))
            assert calls["text"] == 3 + 3 * model.config.num_layers  # each embedder and projection once
            calls["text"] = 0
            cache = backbone.new_cache(batch_size=1, latent_height=4, latent_width=4, window_frames=4, sink_frames=1,
                                       max_new_frames=2)
            backbone(torch.randn(1, 4, 1, 4, 4), torch.zeros(1, 1), torch.tensor([0]), prompt, kv_cache=cache,
                     cache_write=True)
            x = torch.randn(1, 4, 2, 4, 4)
            for c in range(4):
                pos = torch.arange(1 + 2 * c, 3 + 2 * c)
                out = backbone(x, torch.full((1, 2), 500.0), pos, prompt, kv_cache=cache)
                backbone(x, torch.zeros(1, 2), pos, prompt, kv_cache=cache, cache_write=True)
            assert calls["text"] == 0
            other = backbone.encode_prompt(torch.randn(1, 4, 24))
            calls["text"] = 0
            assert (backbone(x, torch.full((1, 2), 500.0), pos, other, kv_cache=cache) - out).abs().max() > 1e-4
            assert calls["text"] == 0
    finally:
        for hook in hooks:
            hook.remove()


def test_batched_rows_equal_single_runs_with_uneven_context_and_prompts():
    """Row 0 starts from an image (one more cached frame than row 1) and the rows' prompts have
    different lengths (cat pads with masked keys): each row equals its run alone."""
    backbone = make_backbone(seed=5, image_start=True)
    torch.manual_seed(6)
    start, x = torch.randn(1, 4, 1, 4, 4), torch.randn(2, 4, 2, 4, 4)
    t, pos = torch.tensor([[300.0, 300.0], [700.0, 700.0]]), torch.tensor([1, 2])
    with torch.no_grad():
        prompts = [backbone.encode_prompt(torch.randn(1, 5, 24)), backbone.encode_prompt(torch.randn(1, 2, 24))]
        both = HunyuanPromptState.cat(prompts)
        assert both.key_mask.tolist() == [[True] * 5, [True] * 2 + [False] * 3]
        cache = backbone.new_cache(batch_size=2, latent_height=4, latent_width=4, window_frames=4, sink_frames=0,
                                   max_new_frames=2)
        backbone(start, torch.zeros(1, 1), torch.tensor([0]), prompts[0].select([0]), kv_cache=cache.rows([0]),
                 cache_write=True)
        batched = backbone(x, t, pos, both, kv_cache=cache)
        singles = []
        for row in range(2):
            alone = backbone.new_cache(batch_size=1, latent_height=4, latent_width=4, window_frames=4, sink_frames=0,
                                       max_new_frames=2)
            if row == 0:
                backbone(start, torch.zeros(1, 1), torch.tensor([0]), prompts[0], kv_cache=alone, cache_write=True)
            singles.append(backbone(x[row:row + 1], t[row:row + 1], pos, prompts[row], kv_cache=alone))
    torch.testing.assert_close(batched, torch.cat(singles), **TOL)


def test_memory_frames_in_the_cache_equal_the_full_forward_under_the_memory_rule():
    """View memory in the cache (docs/design.md §6): frames written through ``memory_writer``
    (each attends to itself and the text) and read by a denoising forward equal one full forward
    under causal_frame_mask's memory rule; the rows hold 2 and 1 memory frames (masked path)."""
    backbone = make_backbone(seed=7, image_start=True)
    torch.manual_seed(8)
    start, clean, noisy = torch.randn(2, 4, 1, 4, 4), torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4)
    memory, counts = torch.randn(2, 4, 2, 4, 4), [2, 1]
    t = torch.tensor([[400.0, 400.0], [900.0, 900.0]])
    qwen, qwen_mask, byt5, byt5_mask = text_inputs(2)
    with torch.no_grad():
        prompt = backbone.encode_prompt(qwen, qwen_mask, byt5_embeds=byt5, byt5_mask=byt5_mask)
        cache = backbone.new_cache(batch_size=2, latent_height=4, latent_width=4, window_frames=2, sink_frames=1,
                                   max_new_frames=2, memory_frames=2)
        backbone(start, torch.zeros(2, 1), torch.tensor([0]), prompt, kv_cache=cache, cache_write=True)
        backbone(clean, torch.zeros(2, 2), torch.tensor([1, 2]), prompt, kv_cache=cache, cache_write=True)
        backbone(memory, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), prompt,
                 kv_cache=cache.memory_writer(counts), cache_write=True)
        streamed = backbone(noisy, t, torch.tensor([3, 4]), prompt, kv_cache=cache.reading_memory())
        without = backbone(noisy, t, torch.tensor([3, 4]), prompt, kv_cache=cache)
        for row, count in enumerate(counts):
            x = torch.cat([memory[row:row + 1, :, 2 - count:], start[row:row + 1], clean[row:row + 1],
                           noisy[row:row + 1]], dim=2)
            positions = torch.tensor([0] * count + [0, 1, 2, 3, 4])
            blocks = torch.tensor([-1] * count + [0, 1, 1, 2, 2])
            is_memory = torch.tensor([True] * count + [False] * 5)
            is_noisy = torch.tensor([False] * (count + 3) + [True, True])
            mask = causal_frame_mask(positions, blocks, noisy=is_noisy, window_frames=2, sink_frames=1,
                                     memory=is_memory)
            timestep = torch.cat([torch.zeros(1, count + 3), t[row:row + 1]], dim=1)
            full = backbone(x, timestep, positions, prompt.select([row]), frame_mask=mask)[:, :, -2:]
            torch.testing.assert_close(streamed[row:row + 1], full, **TOL)
    assert (streamed - without).abs().max() > 1e-3  # the memory frames are read


def test_gradient_checkpointing_gives_identical_gradients():
    def grads(checkpointing):
        backbone = make_backbone(seed=4, image_start=False)
        backbone.gradient_checkpointing = checkpointing
        torch.manual_seed(5)
        x = torch.randn(1, 4, 4, 4, 4)
        mask = causal_frame_mask(torch.arange(4), torch.tensor([0, 0, 1, 1]))
        out = backbone(x, torch.tensor([[0.0, 0.0, 700.0, 700.0]]), torch.arange(4),
                       backbone.encode_prompt(torch.randn(1, 2, 24)), frame_mask=mask)
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    assert any("add_k_proj" in name for name in plain)  # the text stream is trained through the prompt state
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def _camera_conditions(batch, num_frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    deltas = torch.cat([torch.randn(batch, num_frames - 1, 3, generator=g) * 0.1,
                        torch.randn(batch, num_frames - 1, 3, generator=g) * 4], dim=-1).double()
    w2c = camera.invert_pose(camera.compose_deltas(deltas)).float()
    intrinsics = camera.intrinsics_from_fov(60, 64, 64).float().expand(batch, num_frames, 4)
    actions = (torch.rand(batch, num_frames, 6, generator=g) * 2 - 1) * torch.tensor([0.16] * 3 + [6.0] * 3)
    return FrameConditions(w2c, intrinsics, actions)


def test_camera_and_action_branches_start_invisible_and_stream_exactly():
    config = ConditioningConfig(camera="prope", action_spec=camera_action_spec())
    plain, conditioned = make_backbone(seed=1, image_start=False), make_backbone(seed=1, conditioning=config, image_start=False)
    batch, chunk, num_chunks = 2, 2, 3
    n = chunk * num_chunks
    torch.manual_seed(3)
    clean, noisy = torch.randn(batch, 4, n, 4, 4), torch.randn(batch, 4, n, 4, 4)
    t_noisy = (torch.rand(batch, num_chunks) * 1000).repeat_interleave(chunk, dim=1)
    cond = _camera_conditions(batch, n, seed=4)
    x, timestep, positions, mask, split = _teacher_forcing_layout(None, clean, noisy, t_noisy, chunk, 3, 1)
    both = FrameConditions.cat([cond, cond])
    with torch.no_grad():
        prompt = plain.encode_prompt(torch.randn(batch, 5, 24))
        reference = plain(x, timestep, positions, prompt, frame_mask=mask)
        at_init = conditioned(x, timestep, positions, prompt, frame_mask=mask, conditions=both)
        torch.testing.assert_close(at_init, reference, atol=0, rtol=0)  # zero-initialised branches

        randomize_(conditioned.conditioning, seed=2, scale=2.0)
        full = conditioned(x, timestep, positions, prompt, frame_mask=mask, conditions=both)[:, :, split:]
        cache = conditioned.new_cache(batch_size=batch, latent_height=4, latent_width=4, window_frames=3,
                                      sink_frames=1, max_new_frames=chunk)
        assert set(cache.streams) == {"main", "prope"}
        outputs = []
        for c in range(num_chunks):
            frames = slice(c * chunk, (c + 1) * chunk)
            part = cond.frames(frames)
            outputs.append(conditioned(noisy[:, :, frames], t_noisy[:, frames], positions[frames], prompt,
                                       kv_cache=cache, conditions=part))
            conditioned(clean[:, :, frames], torch.zeros(batch, chunk), positions[frames], prompt, kv_cache=cache,
                        cache_write=True, conditions=part)
    torch.testing.assert_close(torch.cat(outputs, 2), full, **TOL)
    assert (full - reference[:, :, split:]).abs().max() > 1e-2  # the live branches do change the output


def test_fsdp_layout_covers_the_blocks_and_the_text_path():
    backbone = make_backbone()
    model = backbone.transformer
    units, replicated = backbone.fsdp_layout()
    assert units[:3] == [model.context_embedder, model.context_embedder_2, model.image_embedder]
    assert units[3:] == list(model.transformer_blocks)
    in_units = {p for u in units for p in u.parameters()}
    assert not (in_units & replicated)
    assert replicated == set(model.time_embed.parameters()) | set(model.cond_type_embed.parameters())
    assert backbone.fsdp_forward_methods == ("encode_prompt",)


def test_bad_inputs_raise_clear_errors():
    backbone = make_backbone(image_start=True)
    assert backbone.text_dim == 24 and backbone.null_prompt_embeds(3).shape == (3, 1, 24)
    prompt = backbone.encode_prompt(torch.zeros(1, 1, 24))
    x = torch.randn(1, 4, 2, 4, 4)
    with pytest.raises(ValueError, match="4 latent channels, got 9; the 5 conditioning channels are filled"):
        backbone(torch.randn(1, 9, 2, 4, 4), torch.zeros(1, 2), torch.arange(2), prompt)
    with pytest.raises(ValueError, match="latent channels, got 3"):
        backbone(torch.randn(1, 3, 2, 4, 4), torch.zeros(1, 2), torch.arange(2), prompt)
    with pytest.raises(ValueError, match=r"timestep must be \(B, F\)"):
        backbone(x, torch.zeros(1), torch.arange(2), prompt)
    with pytest.raises(ValueError, match=r"timestep must be \(B, F\)"):
        backbone(x, torch.zeros(1, 3), torch.arange(2), prompt)
    with pytest.raises(ValueError, match="frame_positions"):
        backbone(x, torch.zeros(1, 2), torch.arange(3), prompt)
    with pytest.raises(ValueError, match="position 0 is the start image"):
        backbone(x, torch.full((1, 2), 500.0), torch.arange(2), prompt)
    with pytest.raises(ValueError, match="prompt batch"):
        backbone(torch.randn(2, 4, 2, 4, 4), torch.zeros(2, 2), torch.arange(1, 3), prompt)
    with pytest.raises(ValueError, match="prompt embeddings must be"):
        backbone.encode_prompt(torch.zeros(1, 1, 23))
    with pytest.raises(ValueError, match="byt5 embeddings must be"):
        backbone.encode_prompt(torch.zeros(1, 1, 24), byt5_embeds=torch.zeros(1, 2, 24))
    with pytest.raises(ValueError, match="at least one real token"):
        backbone.encode_prompt(torch.zeros(1, 2, 24), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="temporal patch"):
        make_backbone(transformer_overrides=dict(patch_size_t=2))
    with pytest.raises(ValueError, match="rope_axes_dim"):
        make_backbone(transformer_overrides=dict(rope_axes_dim=(4, 4, 4)))
    with pytest.raises(ValueError, match="in_channels must be"):
        make_backbone(transformer_overrides=dict(in_channels=6))
    cache = backbone.new_cache(batch_size=1, latent_height=4, latent_width=4, window_frames=2, sink_frames=0,
                               max_new_frames=1)
    with pytest.raises(ValueError, match="at most 1 frames"):
        backbone(x, torch.zeros(1, 2), torch.arange(1, 3), prompt, kv_cache=cache)
