"""The Wan VAE codec: streaming decode equals whole-clip decode."""

import pytest
import torch

from minwm_env.codec import from_uint8, to_uint8


@pytest.mark.parametrize("splits", [[1, 4, 4], [1, 1, 7], [3, 6], [9]])
def test_streaming_decode_equals_full_decode(tiny_model, splits):
    codec = tiny_model.codec
    latents = torch.randn(2, codec.latent_channels, sum(splits), 8, 8, generator=torch.Generator().manual_seed(0))
    full = codec.decode(latents)
    stream = codec.stream()
    parts, start = [], 0
    for n in splits:
        parts.append(stream.push(latents[:, :, start:start + n]))
        start += n
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == (2, 3, 1 + 4 * (sum(splits) - 1), 64, 64)
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=0)


def test_streams_are_independent(tiny_model):
    codec = tiny_model.codec
    a, b = torch.randn(1, 4, 5, 8, 8), torch.randn(1, 4, 5, 8, 8)
    sa, sb = codec.stream(), codec.stream()
    out_a = torch.cat([sa.push(a[:, :, :1]), sb.push(b[:, :, :1]), sa.push(a[:, :, 1:])][::2], dim=2)
    torch.testing.assert_close(out_a, codec.decode(a), atol=1e-5, rtol=0)


def test_encode_image_shape_and_normalisation(tiny_model):
    codec = tiny_model.codec
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    latent = codec.encode_image(image)
    assert latent.shape == (2, codec.latent_channels, 1, 8, 8)
    raw = codec.vae.encode(image.unsqueeze(2)).latent_dist.mode()
    torch.testing.assert_close(codec.denormalize(latent), raw)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        codec.encode(torch.zeros(1, 3, 3, 64, 64))


def test_uint8_round_trip():
    frames = torch.randint(0, 256, (1, 2, 4, 5, 3), dtype=torch.uint8)
    back = to_uint8(from_uint8(frames).permute(0, 2, 1, 3, 4))  # (B, 3, T, H, W)
    assert torch.equal(back, frames)


def test_row_reset_equals_a_fresh_stream_for_that_row(tiny_model):
    codec = tiny_model.codec
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 9, 8, 8, generator=g)
    b = torch.randn(1, 4, 5, 8, 8, generator=g)
    stream = codec.stream()
    stream.push(a[:, :, :1])
    stream.push(a[:, :, 1:5])
    first = stream.reset_rows([1], b[:, :, :1])  # row 1 starts over with clip b
    later = stream.push(torch.cat([a[:1, :, 5:9], b[:, :, 1:5], a[2:, :, 5:9]]))
    torch.testing.assert_close(first, codec.decode(b[:, :, :1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(later[1:2], codec.decode(b)[:, :, 1:], atol=1e-5, rtol=0)
    for row in (0, 2):
        torch.testing.assert_close(later[row:row + 1], codec.decode(a[row:row + 1])[:, :, 17:], atol=1e-5, rtol=0)


def test_fast_rms_norm_equals_diffusers(tiny_model):
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    from minwm_env.codec import _rms_norm_forward
    norms = [m for m in tiny_model.codec.vae.modules() if isinstance(m, WanRMS_norm)]
    assert norms and all("forward" in vars(m) for m in norms)  # our forward is installed
    x = torch.randn(2, norms[0].gamma.shape[0], 3, 8, 8)
    with torch.no_grad():
        norms[0].gamma.mul_(1.5)
        torch.testing.assert_close(norms[0](x), WanRMS_norm.forward(norms[0], x), atol=1e-6, rtol=1e-6)
        # bf16: accumulated in float32 without a float32 copy of x, within bf16 rounding of
        # diffusers' own bf16 result and of the float32 one
        half = WanRMS_norm(norms[0].gamma.shape[0], channel_first=True, images=False)
        half.load_state_dict(norms[0].state_dict())
        half = half.to(torch.bfloat16)
        ours = _rms_norm_forward(half, x.bfloat16())
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), WanRMS_norm.forward(half, x.bfloat16()).float(), atol=0.02, rtol=0.02)
        torch.testing.assert_close(ours.float(), norms[0](x), atol=0.05, rtol=0.02)


def test_space_to_depth_is_lossless_and_streams():
    from minwm_env.codec import SpaceToDepthCodec
    codec = SpaceToDepthCodec()
    frames = torch.rand(2, 3, 17, 64, 64) * 2 - 1
    latents = codec.encode(frames)
    assert latents.shape == (2, 192, 5, 16, 16)
    assert torch.equal(codec.decode(latents), frames.clamp(-1, 1))
    stream = codec.stream()
    streamed = torch.cat([stream.push(latents[:, :, :1]), stream.push(latents[:, :, 1:3]), stream.push(latents[:, :, 3:])], 2)
    assert torch.equal(streamed, frames)
    # latent frame k holds RGB frames 4k-3..4k: changing frame 6 changes latent frame 2 only
    changed = frames.clone()
    changed[:, :, 6] = 0
    diff = (codec.encode(changed) - latents).abs().sum(dim=(0, 1, 3, 4))
    assert diff[2] > 0 and diff[[0, 1, 3, 4]].sum() == 0
    assert torch.equal(stream.reset_rows([1], latents[1:, :, :1]), frames[1:, :, :1])


def test_space_to_depth_restart_latent_is_the_last_frame_as_a_start_image():
    from minwm_env.codec import SpaceToDepthCodec
    codec = SpaceToDepthCodec()
    frames = torch.rand(2, 3, 9, 64, 64) * 2 - 1
    latents = codec.encode(frames)  # latent 0 = frame 0 repeated; latent 2 = frames 5..8
    restarted = codec.restart_latent(latents)
    assert torch.equal(restarted, codec.encode_image(frames[:, :, 8]))
    assert torch.equal(codec.decode(restarted), frames[:, :, 8:9])
    # out-of-range pixels (a model's output) are clamped to a valid image on the way
    assert torch.equal(codec.restart_latent(latents * 3), codec.encode_image((frames[:, :, 8] * 3).clamp(-1, 1)))
