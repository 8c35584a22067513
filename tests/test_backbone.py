"""The causal Wan adapter: equal to diffusers where it should be, causal where it must be."""

import math

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from minwm_env.backbones import CausalWan, FramePositionRotary, causal_frame_mask

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)
TOL = dict(atol=1e-5, rtol=0)


def make_backbone(seed=0, **overrides):
    torch.manual_seed(seed)
    return CausalWan(WanTransformer3DModel(**{**TINY, **overrides})).eval()


def test_installing_processors_leaves_the_stock_forward_unchanged():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY).eval()
    x, t, text = torch.randn(2, 4, 5, 8, 8), torch.tensor([100.0, 900.0]), torch.randn(2, 7, 32)
    with torch.no_grad():
        before = model(x, t, text).sample
        CausalWan(model)
        after = model(x, t, text).sample
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_adapter_without_mask_equals_diffusers_forward():
    backbone = make_backbone()
    x, t, text = torch.randn(2, 4, 5, 8, 6), torch.tensor([100.0, 900.0]), torch.randn(2, 7, 32)
    with torch.no_grad():
        reference = backbone.transformer(x, t, text).sample
        ours = backbone(x, t[:, None].expand(2, 5), torch.arange(5), backbone.encode_prompt(text))
    torch.testing.assert_close(ours, reference, **TOL)


def test_per_frame_timesteps_equal_separate_forwards_under_a_block_diagonal_mask():
    backbone = make_backbone()
    x, text = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 3, 32)
    blocks = torch.tensor([0, 0, 1, 1])
    mask = blocks[:, None] == blocks[None, :]
    timestep = torch.tensor([[200.0, 200.0, 800.0, 800.0]])
    with torch.no_grad():
        prompt = backbone.encode_prompt(text)
        joint = backbone(x, timestep, torch.arange(4), prompt, frame_mask=mask)
        first = backbone(x[:, :, :2], timestep[:, :2], torch.arange(2), prompt)
        second = backbone(x[:, :, 2:], timestep[:, 2:], torch.arange(2, 4), prompt)
    torch.testing.assert_close(joint, torch.cat([first, second], dim=2), **TOL)


def test_rotary_matches_diffusers_table_below_1024():
    head_dim = 16
    ours = FramePositionRotary(head_dim)
    theirs = WanRotaryPosEmbed(head_dim, (1, 2, 2), max_seq_len=1024)
    cos, sin = ours(torch.arange(6), 4, 5)
    ref_cos, ref_sin = theirs(torch.zeros(1, 1, 6, 8, 10))
    torch.testing.assert_close(cos, ref_cos, atol=0, rtol=0)
    torch.testing.assert_close(sin, ref_sin, atol=0, rtol=0)


@pytest.mark.parametrize("position", [1023, 1024, 5000, 123456])
def test_rotary_past_1024_equals_closed_form(position):
    head_dim = 16
    rotary = FramePositionRotary(head_dim)
    cos, sin = rotary(torch.tensor([position]), 1, 1)
    t_dim = head_dim - 4 * (head_dim // 6)
    # Closed form for the time axis at height = width = 0: angle_i = pos / 10000^(2i / t_dim).
    angles = [position / 10000 ** (2 * i / t_dim) for i in range(t_dim // 2)]
    expected_cos = torch.tensor([math.cos(a) for a in angles for _ in range(2)], dtype=torch.float32)
    expected_sin = torch.tensor([math.sin(a) for a in angles for _ in range(2)], dtype=torch.float32)
    torch.testing.assert_close(cos[0, 0, 0, :t_dim], expected_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0, 0, 0, :t_dim], expected_sin, atol=1e-6, rtol=0)
    # The spatial axes at position 0 are unrotated.
    assert torch.all(cos[0, 0, 0, t_dim:] == 1) and torch.all(sin[0, 0, 0, t_dim:] == 0)


def _teacher_forcing_reference(backbone, prefix, clean, noisy, t_noisy, chunk, window=None, sink=0):
    """Full-sequence forward over [prefix ; clean chunks ; noisy chunks] with the stage-1 mask."""
    batch, _, num_frames = clean.shape[:3]
    num_prefix = 0 if prefix is None else prefix.shape[2]
    clean_all = clean if prefix is None else torch.cat([prefix, clean], dim=2)
    positions = torch.arange(num_prefix + num_frames)
    blocks = torch.cat([torch.zeros(num_prefix, dtype=torch.long), torch.arange(num_frames) // chunk + 1])
    x = torch.cat([clean_all, noisy], dim=2)
    timestep = torch.cat([torch.zeros(batch, num_prefix + num_frames), t_noisy], dim=1)
    all_positions = torch.cat([positions, positions[num_prefix:]])
    all_blocks = torch.cat([blocks, blocks[num_prefix:]])
    is_noisy = torch.cat([torch.zeros(num_prefix + num_frames, dtype=torch.bool), torch.ones(num_frames, dtype=torch.bool)])
    mask = causal_frame_mask(all_positions, all_blocks, noisy=is_noisy, window_frames=window, sink_frames=sink)
    return x, timestep, all_positions, mask, num_prefix + num_frames


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("window,sink", [(None, 0), (3, 0), (3, 1), (2, 2)])
def test_streaming_with_cache_equals_full_block_causal_forward(with_prefix, window, sink):
    backbone = make_backbone(seed=1)
    batch, chunk, num_chunks = 2, 2, 4
    num_frames = chunk * num_chunks
    torch.manual_seed(3)
    prefix = torch.randn(batch, 4, 1, 8, 8) if with_prefix else None
    clean, noisy = torch.randn(batch, 4, num_frames, 8, 8), torch.randn(batch, 4, num_frames, 8, 8)
    t_noisy = (torch.rand(batch, num_chunks) * 1000).repeat_interleave(chunk, dim=1)
    text = torch.randn(batch, 5, 32)
    with torch.no_grad():
        prompt = backbone.encode_prompt(text)
        x, timestep, positions, mask, split = _teacher_forcing_reference(
            backbone, prefix, clean, noisy, t_noisy, chunk, window, sink)
        full = backbone(x, timestep, positions, prompt, frame_mask=mask)[:, :, split:]

        cache = backbone.new_cache(batch_size=batch, latent_height=8, latent_width=8,
                                   window_frames=window or 1000, sink_frames=sink, max_new_frames=chunk)
        offset = 0
        if with_prefix:
            backbone(prefix, torch.zeros(batch, 1), torch.tensor([0]), prompt, kv_cache=cache, cache_write=True)
            offset = 1
        outputs = []
        for c in range(num_chunks):
            frames = slice(c * chunk, (c + 1) * chunk)
            pos = torch.arange(offset + c * chunk, offset + (c + 1) * chunk)
            outputs.append(backbone(noisy[:, :, frames], t_noisy[:, frames], pos, prompt, kv_cache=cache))
            backbone(clean[:, :, frames], torch.zeros(batch, chunk), pos, prompt, kv_cache=cache, cache_write=True)
    streamed = torch.cat(outputs, dim=2)
    torch.testing.assert_close(streamed, full, **TOL)
    # The full output is not trivially equal: without the mask it differs.
    assert (streamed - backbone(x, timestep, positions, prompt)[:, :, split:]).abs().max() > 1e-3


def _stream_into(backbone, cache, num_chunks: int, chunk: int = 2):
    """Write ``num_chunks`` chunks into ``cache``, yielding after each the positions it holds and
    the number of keys that chunk's attention read (layer 0): what a chunk's cost and the memory
    it touches grow with."""
    attended = []
    extend = cache.extend

    def recording_extend(layer, key, value, *args, **kwargs):
        keys, values, mask = extend(layer, key, value, *args, **kwargs)
        if layer == 0:
            attended.append(keys.shape[2])
        return keys, values, mask

    cache.extend = recording_extend
    prompt = backbone.encode_prompt(torch.zeros(1, 1, 32))
    with torch.no_grad():
        for start in range(0, num_chunks * chunk, chunk):
            pos = torch.arange(start, start + chunk)
            backbone(torch.randn(1, 4, chunk, 4, 4), torch.zeros(1, chunk), pos, prompt, kv_cache=cache, cache_write=True)
            yield list(cache.frame_positions), attended[-1]


def test_cache_keeps_sink_and_window_so_attention_stays_flat():
    """After every chunk the cache holds the sink frame and the last 3 frames, and the keys a
    forward attends to stop growing once the window is full. Its buffers are allocated once, so
    their byte count cannot show growth; the control below shows these measurements can: the
    same stream into a cache whose window outlasts it (nothing evicted) grows every chunk."""
    backbone = make_backbone()
    rolling = backbone.new_cache(batch_size=1, latent_height=4, latent_width=4, window_frames=3, sink_frames=1,
                                 max_new_frames=2)
    tokens = rolling.tokens_per_frame
    for k, (positions, attended) in enumerate(_stream_into(backbone, rolling, num_chunks=10)):
        written = list(range(2 * (k + 1)))
        assert positions == written[:1] + written[1:][-3:], f"chunk {k}"
        assert attended == min(2 * (k + 1), 6) * tokens, f"chunk {k}"  # held + new frames: flat from chunk 2
    assert rolling.num_frames_written == [20]

    keeps_all = backbone.new_cache(batch_size=1, latent_height=4, latent_width=4, window_frames=1000, sink_frames=1,
                                   max_new_frames=2)
    grown = list(_stream_into(backbone, keeps_all, num_chunks=10))
    assert [len(positions) for positions, _ in grown] == [2 * (k + 1) for k in range(10)]
    assert [attended for _, attended in grown] == [2 * (k + 1) * tokens for k in range(10)]


def test_noisy_chunk_gets_no_gradient_from_later_chunks():
    backbone = make_backbone()
    chunk, num_chunks = 2, 3
    clean = torch.randn(1, 4, chunk * num_chunks, 4, 4, requires_grad=True)
    noisy = torch.randn(1, 4, chunk * num_chunks, 4, 4, requires_grad=True)
    x, timestep, positions, mask, split = _teacher_forcing_reference(
        backbone, None, clean, noisy, torch.full((1, chunk * num_chunks), 500.0), chunk)
    out = backbone(x, timestep, positions, backbone.encode_prompt(torch.zeros(1, 1, 32)), frame_mask=mask)
    out[:, :, split:split + chunk].sum().backward()  # the first noisy chunk's output
    assert clean.grad.abs().sum() == 0  # chunk 0 sees no clean frames at all
    assert noisy.grad[:, :, chunk:].abs().sum() == 0 and noisy.grad[:, :, :chunk].abs().sum() > 0


def test_gradient_checkpointing_gives_identical_gradients():
    def grads(checkpointing):
        backbone = make_backbone(seed=4)
        backbone.gradient_checkpointing = checkpointing
        torch.manual_seed(5)
        x = torch.randn(1, 4, 4, 4, 4)
        mask = causal_frame_mask(torch.arange(4), torch.tensor([0, 0, 1, 1]))
        out = backbone(x, torch.tensor([[0.0, 0.0, 700.0, 700.0]]), torch.arange(4),
                       backbone.encode_prompt(torch.randn(1, 2, 32)), frame_mask=mask)
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    backbone = make_backbone()
    prompt = backbone.encode_prompt(torch.zeros(1, 1, 32))
    x = torch.randn(1, 4, 2, 4, 4)
    with pytest.raises(ValueError, match="timestep must be"):
        backbone(x, torch.zeros(1, 3), torch.arange(2), prompt)
    with pytest.raises(ValueError, match="frame_positions"):
        backbone(x, torch.zeros(1, 2), torch.arange(3), prompt)
    with pytest.raises(ValueError, match="prompt embeddings"):
        backbone.encode_prompt(torch.zeros(1, 1, 31))
    with pytest.raises(ValueError, match="temporal patch"):
        CausalWan(WanTransformer3DModel(**{**TINY, "patch_size": (2, 2, 2)}))
    cache = backbone.new_cache(batch_size=1, latent_height=4, latent_width=4, window_frames=2, sink_frames=0,
                               max_new_frames=1)
    with pytest.raises(ValueError, match="at most 1 frames"):
        backbone(x, torch.zeros(1, 2), torch.arange(2), prompt, kv_cache=cache)
