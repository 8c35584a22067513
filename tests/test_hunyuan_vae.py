"""HunyuanVideo-1.5's VAE codec: streaming decode equals diffusers' whole-clip decode.

The VAE is diffusers' own class at a tiny size (random weights): 8× spatial, 4× temporal, 32
latent channels, so its decoder has two temporal+spatial upsamplers and one spatial-only one.
"""

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15

from minwm_env.hunyuan_vae import HunyuanVAECodec

TINY = dict(block_out_channels=(16, 16, 32, 64), layers_per_block=1, spatial_compression_ratio=8,
            temporal_compression_ratio=4)


def tiny_codec(attention_window=None) -> HunyuanVAECodec:
    torch.manual_seed(0)
    return HunyuanVAECodec(AutoencoderKLHunyuanVideo15(**TINY).eval(), attention_window=attention_window)


@pytest.fixture(scope="module")
def codec():
    return tiny_codec()


def random_latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def stream_decode(stream, latents, splits):
    parts, start = [], 0
    for n in splits:
        parts.append(stream.push(latents[:, :, start:start + n]))
        start += n
    assert start == latents.shape[2]
    return torch.cat(parts, dim=2)


@pytest.fixture(scope="module")
def clip(codec):
    """Two rows of 5 latent frames and diffusers' whole-clip decode of them."""
    latents = random_latents(2, 32, 5, 2, 3)
    return latents, codec.decode(latents)


@pytest.mark.parametrize("splits", [[1] * 5, [2, 2, 1], [3, 2], [1, 3, 1]])
def test_streaming_decode_equals_full_decode(codec, clip, splits):
    latents, full = clip
    assert full.shape == (2, 3, 1 + 4 * 4, 16, 24)
    assert (full.abs() < 1).float().mean() > 0.95  # the stream's clamp to [-1, 1] hides little
    streamed = stream_decode(codec.stream(), latents, splits)
    torch.testing.assert_close(streamed, full.clamp(-1, 1), atol=1e-5, rtol=0)


def test_diffusers_attention_is_frame_causal(codec):
    """Why streaming is exact: changing latent frame 3 leaves the frames decoded before it."""
    latents = random_latents(1, 32, 5, 2, 3)
    changed = latents.clone()
    changed[:, :, 3] += 1
    a, b = codec.decode(latents), codec.decode(changed)
    torch.testing.assert_close(a[:, :, :1 + 4 * 2], b[:, :, :1 + 4 * 2], atol=1e-6, rtol=0)
    assert (a[:, :, 1 + 4 * 2:] - b[:, :, 1 + 4 * 2:]).abs().max() > 1e-2


def test_a_new_stream_and_a_row_reset_start_new_videos(codec):
    a = random_latents(3, 32, 5, 2, 3, seed=1)
    b = random_latents(1, 32, 3, 2, 3, seed=2)
    stream = codec.stream()
    stream.push(a[:, :, :1])
    stream.push(a[:, :, 1:3])
    first = stream.reset_rows([1], b[:, :, :1])  # row 1 starts over with clip b
    later = stream.push(torch.cat([a[:1, :, 3:5], b[:, :, 1:3], a[2:, :, 3:5]]))
    full_b = codec.decode(b).clamp(-1, 1)
    torch.testing.assert_close(first, full_b[:, :, :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(later[1:2], full_b[:, :, 1:], atol=1e-5, rtol=0)
    for row in (0, 2):
        full_a = codec.decode(a[row:row + 1]).clamp(-1, 1)
        torch.testing.assert_close(later[row:row + 1], full_a[:, :, 9:], atol=1e-5, rtol=0)
    # a second stream on the same codec starts from nothing
    torch.testing.assert_close(stream_decode(codec.stream(), b, [2, 1]), full_b, atol=1e-5, rtol=0)


def test_encode_decode_shapes_and_scaling(codec):
    frames = torch.rand(2, 3, 9, 24, 32) * 2 - 1
    latents = codec.encode(frames)
    assert latents.shape == (2, 32, 3, 3, 4) and codec.latent_size(24, 32) == (3, 4)
    raw = codec.vae.encode(frames[1:]).latent_dist.mode()
    torch.testing.assert_close(latents[1:], raw * codec.vae.config.scaling_factor)
    assert codec.decode(latents).shape == frames.shape
    assert codec.encode_image(frames[:, :, 0]).shape == (2, 32, 1, 3, 4)


def test_bad_input_raises_clear_errors(codec):
    with pytest.raises(ValueError, match="32 channels, got 16"):
        codec.stream().push(torch.zeros(1, 16, 2, 3, 4))
    with pytest.raises(ValueError, match="32 channels"):
        codec.decode(torch.zeros(1, 16, 2, 3, 4))
    with pytest.raises(ValueError, match="at least one latent frame"):
        codec.stream().push(torch.zeros(1, 32, 0, 3, 4))
    with pytest.raises(ValueError, match="\\(B, C, n, h, w\\)"):
        codec.stream().push(torch.zeros(32, 2, 3, 4))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        codec.encode(torch.zeros(1, 3, 4, 24, 32))
    with pytest.raises(ValueError, match="divisible by 8"):
        codec.encode(torch.zeros(1, 3, 5, 20, 32))
    stream = codec.stream()
    stream.push(torch.zeros(1, 32, 1, 3, 4))
    with pytest.raises(ValueError, match="start a new stream"):
        stream.push(torch.zeros(1, 32, 1, 4, 4))
    with pytest.raises(ValueError, match="first_latents must be"):
        stream.reset_rows([0], torch.zeros(1, 32, 2, 3, 4))
    with pytest.raises(RuntimeError, match="has started"):
        codec.stream().reset_rows([0], torch.zeros(1, 32, 1, 3, 4))


def test_attention_window_bounds_the_cache_and_is_exact_until_full(codec):
    windowed = tiny_codec(attention_window=3)
    latents = random_latents(1, 32, 7, 2, 3, seed=3)
    exact, bounded = codec.stream(), windowed.stream()
    out_exact, out_bounded, sizes = [], [], []
    for i in range(7):
        out_exact.append(exact.push(latents[:, :, i:i + 1]))
        out_bounded.append(bounded.push(latents[:, :, i:i + 1]))
        sizes.append((exact.cached_frames(), bounded.cached_frames()))
    assert sizes == [(i + 1, min(i + 1, 2)) for i in range(7)]  # the window keeps N - 1 past frames
    for i in range(3):  # the first N latent frames see all the past
        torch.testing.assert_close(out_bounded[i], out_exact[i], atol=1e-5, rtol=0)
    assert (out_bounded[6] - out_exact[6]).abs().max() > 1e-4


def test_save_and_load_round_trip(codec, tmp_path):
    codec.save(tmp_path)
    assert HunyuanVAECodec.describes(tmp_path) and (tmp_path / "vae" / "weights.sha256.json").is_file()
    loaded = HunyuanVAECodec.load(tmp_path, attention_window=5)
    assert loaded.attention_window == 5 and loaded.kind == "hunyuan15-vae"
    latents = random_latents(1, 32, 2, 2, 3, seed=4)
    torch.testing.assert_close(loaded.stream().push(latents), codec.stream().push(latents), atol=0, rtol=0)
