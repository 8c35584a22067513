"""The streaming generator: equal to a full block-causal pass, deterministic, batch-consistent."""

import pytest
import torch

from conftest import randomize_
from minwm_env import camera, flow
from minwm_env.backbones import causal_frame_mask
from minwm_env.conditioning import ConditioningConfig, FrameConditions, camera_action_spec
from minwm_env.generator import StreamingGenerator, generate_clip
from minwm_env.models import build_preset
from minwm_env.pose_strings import parse_pose_string
from minwm_env.samplers import EulerSampler, FewStepSampler, randn_rows


CONDITIONINGS = {"none": None, "prope": ConditioningConfig(camera="prope"),
                 "plucker": ConditioningConfig(camera="plucker"),
                 "camera-action": ConditioningConfig(action_spec=camera_action_spec())}


@pytest.mark.parametrize("conditioning", list(CONDITIONINGS))
@pytest.mark.parametrize("with_image", [False, True])
def test_one_step_rollout_equals_full_block_causal_forward(with_image, conditioning):
    """A 1-step sampler makes each chunk one model call on its noise, so the whole rollout
    can be recomputed by a single full-sequence forward over [clean ; noise] (stage-1 layout),
    with the camera poses composed from the actions."""
    model = build_preset("tiny", conditioning=CONDITIONINGS[conditioning])
    randomize_(model.backbone, seed=2)
    chunk, num_chunks, batch = 2, 3, 2
    gen = StreamingGenerator(model, FewStepSampler(timesteps=(1000.0,)), batch_size=batch, chunk_frames=chunk)
    image = torch.rand(batch, 3, 64, 64) * 2 - 1 if with_image else None
    gen.reset(seed=11, image=image)
    actions = parse_pose_string("w*2,l*2,i*1,a*1").float().reshape(1, num_chunks, chunk, 6).expand(batch, -1, -1, -1)
    outs = [gen.next_chunk(actions[:, c], decode=False) for c in range(num_chunks)]
    generated = torch.cat([o.latents for o in outs], dim=2)

    backbone = model.backbone
    generators = [torch.Generator().manual_seed(s) for s in (11, 12)]
    noise = torch.cat([randn_rows((batch, 4, chunk, 8, 8), generators, "cpu", torch.float32) for _ in range(num_chunks)], 2)
    num_prefix = 1 if with_image else 0
    prefix = [model.codec.encode_image(image)] if with_image else []
    n = chunk * num_chunks
    positions = torch.arange(num_prefix + n)
    blocks = torch.cat([torch.zeros(num_prefix, dtype=torch.long), torch.arange(n) // chunk + 1])
    x = torch.cat(prefix + [generated, noise], dim=2)
    timestep = torch.cat([torch.zeros(batch, num_prefix + n), torch.full((batch, n), 1000.0)], dim=1)
    noisy = torch.cat([torch.zeros(num_prefix + n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    all_pos = torch.cat([positions, positions[num_prefix:]])
    mask = causal_frame_mask(all_pos, torch.cat([blocks, blocks[num_prefix:]]), noisy=noisy)
    conditions = None
    if backbone.conditioning is not None:
        flat = actions.reshape(batch, n, 6)
        deltas = flat[:, 1:] if not with_image else flat  # frame 0 of the episode is the identity
        c2w = camera.compose_deltas(deltas.double())
        if with_image:
            flat = torch.cat([torch.zeros(batch, 1, 6), flat], dim=1)
        c2w_all = torch.cat([c2w, c2w[:, num_prefix:]], dim=1)
        acts_all = torch.cat([flat, flat[:, num_prefix:]], dim=1)
        conditions = FrameConditions(camera.invert_pose(c2w_all).float(),
                                     torch.tensor(model.settings.intrinsics).expand(batch, len(all_pos), 4), acts_all)
        torch.testing.assert_close(outs[-1].c2w, c2w[:, -chunk:])
    with torch.no_grad():
        out = backbone(x, timestep, all_pos, backbone.encode_prompt(backbone.null_prompt_embeds(batch)), frame_mask=mask,
                       conditions=conditions)
    expected = flow.to_x0(out[:, :, num_prefix + n:], noise, 1.0, backbone.prediction_type)
    torch.testing.assert_close(generated, expected, atol=1e-5, rtol=0)


def test_actions_steer_a_conditioned_model_and_bad_actions_leave_state_intact():
    model = build_preset("tiny", conditioning=ConditioningConfig(camera="prope"))
    randomize_(model.backbone, seed=3)
    gen = StreamingGenerator(model)
    forward = parse_pose_string("w*4").float()[None]
    turn = parse_pose_string("l*4").float()[None]

    def rollout(first, second):
        gen.reset(seed=0, image=torch.zeros(1, 3, 64, 64))
        gen.next_chunk(first, decode=False)
        return gen.next_chunk(second, decode=False).latents

    a, b = rollout(forward, forward), rollout(forward, turn)
    assert torch.equal(a, rollout(forward, forward))
    assert (a - b).abs().max() > 1e-3
    # Bad actions raise before anything changes; the episode continues identically.
    gen.reset(seed=0, image=torch.zeros(1, 3, 64, 64))
    gen.next_chunk(forward, decode=False)
    for bad, error in [(torch.full((1, 4, 6), float("nan")), ValueError), (torch.zeros(1, 3, 6), ValueError),
                       (torch.zeros(1, 4, 5), ValueError), (turn * 10, ValueError),
                       (torch.zeros(1, 4, 6, dtype=torch.bool), TypeError)]:
        with pytest.raises(error):
            gen.next_chunk(bad, decode=False)
    assert torch.equal(gen.next_chunk(forward, decode=False).latents, a)


def test_poses_follow_a_pose_string():
    gen = StreamingGenerator(build_preset("tiny"))
    gen.reset(seed=0, image=torch.zeros(1, 3, 64, 64))
    deltas = parse_pose_string("l*30,w*10")  # 12 chunks of 4 would be 40 frames: take 10 chunks
    poses = []
    for c in range(10):
        poses.append(gen.next_chunk(deltas[c * 4:(c + 1) * 4].float()[None], decode=False).c2w)
    expected = camera.compose_deltas(deltas)[1:]
    torch.testing.assert_close(torch.cat(poses, dim=1)[0], expected, atol=1e-6, rtol=0)


def test_same_seed_same_latents_different_seed_differs(tiny_model):
    gen = StreamingGenerator(tiny_model)
    def rollout(seed):
        gen.reset(seed=seed)
        return torch.cat([gen.next_chunk(decode=False).latents for _ in range(3)], dim=2)
    a, b, c = rollout(7), rollout(7), rollout(8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


def test_batched_rows_equal_single_rollouts(tiny_model):
    batched = StreamingGenerator(tiny_model, batch_size=3)
    batched.reset(seed=[4, 9, 2])
    rows = torch.cat([batched.next_chunk().frames for _ in range(2)], dim=2)
    single = StreamingGenerator(tiny_model)
    for i, seed in enumerate([4, 9, 2]):
        single.reset(seed=seed)
        alone = torch.cat([single.next_chunk().frames for _ in range(2)], dim=2)
        torch.testing.assert_close(rows[i:i + 1], alone, atol=1e-5, rtol=0)


def test_decoded_chunks_equal_decoding_the_latents_at_once(tiny_model):
    gen = StreamingGenerator(tiny_model)
    first = gen.reset(seed=0, image=torch.zeros(1, 3, 64, 64))
    outs = [gen.next_chunk() for _ in range(3)]
    latents = torch.cat([tiny_model.codec.encode_image(torch.zeros(1, 3, 64, 64))] + [o.latents for o in outs], dim=2)
    frames = torch.cat([first] + [o.frames for o in outs], dim=2)
    assert frames.shape[2] == 1 + 3 * 4 * 4
    torch.testing.assert_close(frames, tiny_model.codec.decode(latents), atol=1e-5, rtol=0)


def test_guided_ar_generation_runs_and_uses_both_branches(tiny_model):
    randomize_(tiny_model.backbone, seed=1)
    text = torch.randn(1, 400, 32)  # padded to 512 like UMT5 output: a few tokens would be diluted by the padding
    def rollout(scale):
        gen = StreamingGenerator(tiny_model, EulerSampler(num_steps=3, guidance_scale=scale))
        gen.reset(seed=0, prompt_embeds=text)
        return gen.next_chunk(decode=False).latents
    assert rollout(1.0).shape == rollout(3.0).shape == (1, 4, 4, 8, 8)
    assert (rollout(1.0) - rollout(3.0)).abs().max() > 1e-3


def test_bidirectional_clip_sampling(tiny_model):
    clip = generate_clip(tiny_model, EulerSampler(num_steps=2), num_latent_frames=5, seed=3)
    again = generate_clip(tiny_model, EulerSampler(num_steps=2), num_latent_frames=5, seed=3)
    assert clip.shape == (1, 4, 5, 8, 8) and torch.equal(clip, again)


def test_bad_input_raises_and_leaves_state_intact(tiny_model):
    gen = StreamingGenerator(tiny_model)
    with pytest.raises(RuntimeError, match="reset"):
        gen.next_chunk()
    gen.reset(seed=1)
    expected = gen.next_chunk(decode=False).latents
    gen.reset(seed=1)
    with pytest.raises(ValueError, match="shape"):
        gen.reset(seed=5, image=torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="float tensor"):
        gen.reset(seed=5, image=torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        gen.reset(seed=5, image=torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="prompt embeddings"):
        gen.reset(seed=5, prompt_embeds=torch.zeros(1, 2, 7))
    # The failed resets changed nothing: the episode started with seed 1 continues as before.
    torch.testing.assert_close(gen.next_chunk(decode=False).latents, expected, atol=0, rtol=0)


def test_long_stream_keeps_cache_size_and_positions(tiny_model):
    """After every chunk the cache holds the start frame (the sink) and the last 4 frames written,
    never more: a cache that stopped evicting fails at the third chunk. (Its buffers are allocated
    once, so their byte count cannot show growth; the frames held can.)"""
    gen = StreamingGenerator(tiny_model, window_frames=4, sink_frames=1)
    gen.reset(seed=0, image=torch.zeros(1, 3, 64, 64))
    for k in range(8):
        out = gen.next_chunk(decode=False)
        assert out.frame_positions == list(range(1 + 4 * k, 5 + 4 * k))
        written = list(range(1 + 4 * k))  # the start frame, then every chunk before this one (written lazily)
        assert gen.cache.frame_positions == written[:1] + written[1:][-4:], f"chunk {k}"
    assert gen.cache.frame_positions == [0, 25, 26, 27, 28]


@pytest.mark.parametrize("conditioning", ["none", "prope"])
def test_row_reset_continues_like_a_fresh_single_generator(conditioning):
    model = build_preset("tiny", conditioning=CONDITIONINGS[conditioning])
    randomize_(model.backbone, seed=4)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    actions = parse_pose_string("w*4,l*4,a*4,i*4").float().reshape(4, 1, 4, 6)
    batched = StreamingGenerator(model, batch_size=2)
    batched.reset(seed=[5, 6], image=images[:2])
    batched.next_chunk(actions[0].expand(2, -1, -1))
    first = batched.reset_rows([1], [9], images[2:3])  # row 1 starts a new episode
    outs = [batched.next_chunk(actions[k].expand(2, -1, -1)) for k in (1, 2, 3)]

    single = StreamingGenerator(model)
    start = single.reset(seed=9, image=images[2:3])
    alone = [single.next_chunk(actions[k]) for k in (1, 2, 3)]
    torch.testing.assert_close(first, start, atol=1e-5, rtol=0)
    for out, ref in zip(outs, alone):
        torch.testing.assert_close(out.latents[1:], ref.latents, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.frames[1:], ref.frames, atol=1e-4, rtol=0)
    # Row 0 never noticed.
    single.reset(seed=5, image=images[:1])
    single.next_chunk(actions[0])
    for k, out in zip((1, 2, 3), outs):
        torch.testing.assert_close(out.latents[:1], single.next_chunk(actions[k]).latents, atol=1e-4, rtol=0)


def test_restart_context_continues_like_a_fresh_start_from_the_last_frame():
    """With restart_context, chunk c+1 sees chunk c's last RGB frame as a start image: it equals
    a fresh generator started from that frame (same noise; positions differ, RoPE is relative)."""
    model = build_preset("default", restart_context=True)
    randomize_(model.backbone, seed=3)
    actions = torch.tensor([[0.0, 0, 0.08, 3, 0, 0]]).expand(2, 4, 6)
    stream = StreamingGenerator(model, batch_size=2)
    stream.reset(seed=5, start_latents=torch.randn(2, 192, 1, 16, 16), decode=False)
    first = stream.next_chunk(actions, decode=False)
    anchor = model.codec.restart_latent(first.latents)
    assert torch.equal(stream.stream.reference, anchor)
    fresh = StreamingGenerator(model, batch_size=2)
    fresh.reset(seed=0, start_latents=anchor, decode=False)
    fresh._generators = [torch.Generator().set_state(g.get_state()) for g in stream._generators]
    second = stream.next_chunk(actions, decode=False)
    torch.testing.assert_close(fresh.next_chunk(actions, decode=False).latents, second.latents, atol=2e-4, rtol=0)
    # without restart_context the next chunk continues from the raw last latent frame instead
    plain = build_preset("default", restart_context=False)
    randomize_(plain.backbone, seed=3)
    other = StreamingGenerator(plain, batch_size=2)
    other.reset(seed=5, start_latents=torch.randn(2, 192, 1, 16, 16), decode=False)
    other.next_chunk(actions, decode=False)
    assert not torch.equal(other.stream.reference, plain.codec.restart_latent(other.stream.reference))


def test_restart_context_needs_a_codec_that_can_restart(tiny_model):
    from dataclasses import replace
    tiny_model.settings = replace(tiny_model.settings, restart_context=True)
    try:
        with pytest.raises(ValueError, match="restart_context needs a codec with restart_latent"):
            StreamingGenerator(tiny_model)
    finally:
        tiny_model.settings = replace(tiny_model.settings, restart_context=False)
