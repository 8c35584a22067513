"""View memory read from the KV cache (issue 19, item 5): retrieved latent frames written into
the cache at their camera poses, for backbones without a warped reference (the full-size Wan
adapter), tested on the tiny Wan: streaming with memory frames equals the block-causal full
forward over the same frames."""

import numpy as np
import pytest
import torch

from minwm_env.backbones import causal_frame_mask
from minwm_env.conditioning import ConditioningConfig
from minwm_env.models import ModelSettings, WorldModel, build_preset
from minwm_env.samplers import FewStepSampler
from minwm_env.streaming import MEMORY_POSITION

TOL = dict(atol=1e-5, rtol=1e-5)
TURN = [0.0, 0, 0, 6.0, 0, 0]  # yaw steps of 6° (camera-delta actions: x, y, z, yaw, pitch, roll)


def _model(camera="prope", **settings):
    settings = {"memory_mode": "context", "memory_frames": 8, "memory_k": 2, "chunk_frames": 2, **settings}
    return build_preset("tiny", seed=0, conditioning=ConditioningConfig(camera=camera), **settings)


def _actions(yaws, chunk=2):
    """(B, chunk, 6) yaw-only actions, one yaw per row."""
    out = torch.zeros(len(yaws), chunk, 6)
    out[:, :, 3] = torch.tensor(yaws, dtype=torch.float32)[:, None]
    return out


def _run(model, yaw_plan, *, window=1, seed=0):
    """Stream chunks with per-row yaws (a list of per-chunk lists); return the stream and, per
    chunk, (plan, noise, output, sigma) of its single-step denoise."""
    batch = len(yaw_plan[0])
    stream = model.stream(batch_size=batch, window_frames=window, sink_frames=1)
    gen = torch.Generator().manual_seed(seed)
    prompt = model.backbone.encode_prompt(torch.randn(batch, 5, 32, generator=gen))
    start = torch.randn(batch, 4, 1, 8, 8, generator=gen)
    stream.begin(prompt, start)
    history = [(torch.tensor([0]), torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)[:, None],
                stream.action_spec.neutral().expand(batch, 1, -1), start)]
    chunks = []
    sampler = FewStepSampler(timesteps=(1000.0,), shift=1.0)
    for yaws in yaw_plan:
        plan = stream.plan(_actions(yaws))
        noise = torch.randn(batch, *stream.latent_shape, generator=gen)
        stream.flush()
        if plan.memory is not None:
            stream._load_memory(plan.memory)
        with torch.no_grad():
            out, _ = stream.predictor(plan)(noise, 0.7, False)
        latents = stream.denoise(plan, sampler, noise)
        chunks.append((plan, noise, out, history.copy()))
        history.append((plan.positions, plan.c2w, plan.actions, latents))
        stream.commit(plan, latents)
    return stream, prompt, chunks


def _full_forward(model, stream, prompt, plan, noise, history, row, window, sink=1):
    """Row ``row``'s chunk recomputed in one full-sequence forward over [its real memory frames ;
    every clean frame so far ; the noisy chunk] under causal_frame_mask's memory rule."""
    memory = plan.memory
    count = memory.counts[row]
    k = memory.latents.shape[2]
    mem_latents = memory.latents[row:row + 1, :, k - count:]
    mem_c2w = memory.c2w[row:row + 1, k - count:]
    parts = [mem_latents] + [h[3][row:row + 1] for h in history] + [noise[row:row + 1]]
    x = torch.cat(parts, dim=2)
    positions = torch.cat([torch.full((count,), MEMORY_POSITION)] + [h[0] for h in history] + [plan.positions])
    blocks = torch.cat([torch.full((count,), -1)] + [torch.full((len(h[0]),), i) for i, h in enumerate(history)]
                       + [torch.full((len(plan.positions),), len(history))])
    is_memory = torch.cat([torch.ones(count, dtype=torch.bool), torch.zeros(len(positions) - count, dtype=torch.bool)])
    noisy = torch.zeros(len(positions), dtype=torch.bool)
    noisy[-len(plan.positions):] = True
    mask = causal_frame_mask(positions, blocks, noisy=noisy, window_frames=window, sink_frames=sink, memory=is_memory)
    neutral = stream.action_spec.neutral()
    c2w = torch.cat([mem_c2w] + [h[1][row:row + 1] for h in history] + [plan.c2w[row:row + 1]], dim=1)
    actions = torch.cat([neutral.expand(1, count, -1)] + [h[2][row:row + 1] for h in history]
                        + [plan.actions[row:row + 1]], dim=1)
    conditions = stream.conditions(c2w, actions)
    timestep = torch.zeros(1, len(positions))
    timestep[:, -len(plan.positions):] = 700.0
    with torch.no_grad():
        out = model.backbone(x, timestep, positions, prompt.select([row]), frame_mask=mask, conditions=conditions)
    return out[:, :, -len(plan.positions):]


@pytest.mark.parametrize("camera", ["prope", "plucker"])
def test_streaming_with_memory_frames_equals_the_block_causal_full_forward(camera):
    """Row 0 turns away and back (the memory brings back frames the window dropped), row 1 keeps
    turning (other counts, so the cache's per-row masked path runs too); every chunk of every row
    equals the full forward over the same memory frames, context and noisy chunk."""
    model = _model(camera)
    window = 1
    yaw_plan = [[6.0, 6.0], [6.0, 6.0], [-6.0, 6.0], [-6.0, 6.0], [-6.0, 3.0]]
    stream, prompt, chunks = _run(model, yaw_plan, window=window)
    counts = [plan.memory.counts for plan, *_ in chunks]
    assert any(c[0] > 0 for c in counts), counts  # memory frames were read
    assert any(c[0] != c[1] for c in counts), counts  # rows held different numbers (masked path)
    for plan, noise, out, history in chunks:
        for row in range(2):
            full = _full_forward(model, stream, prompt, plan, noise, history, row, window)
            torch.testing.assert_close(out[row:row + 1], full, **TOL)


def test_memory_frames_change_the_chunk_and_off_changes_nothing():
    """With memory frames in the cache the chunk differs from the same stream without them (they
    are read), and a context-memory model with memory off streams exactly like one with no
    memory settings at all."""
    model = _model()
    yaw_plan = [[6.0], [6.0], [-6.0], [-6.0]]
    _, _, with_memory = _run(model, yaw_plan)
    off = WorldModel(model.backbone, model.codec, ModelSettings(**{**model.settings.__dict__, "memory_frames": 0}))
    plain = WorldModel(model.backbone, model.codec, ModelSettings(**{**model.settings.__dict__, "memory_frames": 0,
                                                                   "memory_mode": "reference"}))
    _, _, without = _run(off, yaw_plan)
    _, _, reference = _run(plain, yaw_plan)
    for (_, _, a, _), (plan, _, b, _), (_, _, c, _) in zip(with_memory, without, reference):
        assert plan.memory is None
        torch.testing.assert_close(b, c, atol=0, rtol=0)
    read = [i for i, (plan, *_) in enumerate(with_memory) if plan.memory.counts[0]]
    assert read
    assert max((with_memory[i][2] - without[i][2]).abs().max().item() for i in read) > 1e-3


def test_loaded_memory_is_rewritten_only_when_the_retrieval_changes():
    model = _model()
    # away in 12° chunks, back in 6° chunks: each stored frame fills the gaps of two chunks
    stream, _, chunks = _run(model, [[6.0]] * 4 + [[-3.0]] * 8)
    keys = [plan.memory.key for plan, *_ in chunks]
    changes = sum(1 for i, key in enumerate(keys)
                  if key[:, :, 0].ge(0).any() and (i == 0 or not torch.equal(key, keys[i - 1])))
    assert stream.num_memory_writes == changes
    assert stream.num_memory_writes < sum(1 for key in keys if key[:, :, 0].ge(0).any())


def test_cache_memory_slots_do_not_grow_and_reset_clears_them():
    model = _model(memory_frames=4)
    stream, prompt, _ = _run(model, [[6.0]] * 12 + [[-6.0]] * 6, window=2)
    assert stream.memory.num_frames.tolist() == [4]
    size = stream.cache.nbytes()
    assert stream.cache.memory_frames == 2 and max(stream.cache.memory_counts) <= 2
    stream.begin(prompt, torch.zeros(1, 4, 1, 8, 8))
    assert stream.cache.memory_counts == [0] and stream.memory.num_frames.tolist() == [1]
    assert stream.cache.nbytes() == size


def test_context_memory_in_the_env_runs_and_vector_rows_match_single_envs():
    from minwm_env.envs.world_model import WorldModelEnv, WorldModelVectorEnv
    model = _model()
    turn = np.array([0, 0, 0, 6.0, 0, 0], np.float32)
    actions = [np.stack([s * turn] * 2) for s in (1, 1, -1, -1)]
    single = WorldModelEnv(model=model, memory=True)
    frames = [single.reset(seed=3)[0]] + [single.step(a)[0] for a in actions]
    assert single._world.generator.stream.memory_in_cache
    assert single._world.generator.stream.num_memory_writes > 0
    vector = WorldModelVectorEnv(model=model, num_envs=2, memory=True)
    obs, _ = vector.reset(seed=[3, 4])
    vec_frames = [obs[0]] + [vector.step(np.stack([a, -a]))[0][0] for a in actions]
    for a, b in zip(frames, vec_frames):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_mask_gives_memory_frames_to_the_readers_only():
    positions = torch.tensor([0, 0, 1, 2, 3, 2, 3])
    blocks = torch.tensor([-1, -1, 0, 1, 1, 1, 1])
    noisy = torch.tensor([False, False, False, False, False, True, True])
    memory = torch.tensor([True, True, False, False, False, False, False])
    mask = causal_frame_mask(positions, blocks, noisy=noisy, memory=memory)
    assert mask[:2].tolist() == [[True, False] + [False] * 5, [False, True] + [False] * 5]
    assert not mask[2:5, :2].any()  # clean frames never see memory
    assert mask[5:, :2].all()  # the noisy chunk does
    assert torch.equal(mask[2:, 2:], causal_frame_mask(positions[2:], blocks[2:], noisy=noisy[2:]))


def test_bad_memory_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="camera conditioning"):
        build_preset("tiny", memory_mode="context", memory_frames=4).stream()
    with pytest.raises(ValueError, match="warp_reference"):
        build_preset("tiny", memory_frames=4).stream()
    with pytest.raises(ValueError, match="memory_mode must be one of"):
        ModelSettings.from_dict({"memory_mode": "kv"}, "minwm.json")
    cache = _model().stream().cache
    with pytest.raises(ValueError, match="memory frames for each"):
        cache.memory_writer([3])


def test_a_differentiable_chunk_reads_the_same_memory_frames():
    """DMD's self-rollout keeps the gradient of its exit step through a frozen copy of the
    context: with memory frames, that copy holds them too (same output, gradients flow)."""
    model = _model()
    stream, _, _ = _run(model, [[6.0]] * 4 + [[-3.0]] * 2)
    plan = stream.plan(_actions([-3.0]))
    assert plan.memory.counts[0] > 0
    sampler = FewStepSampler(timesteps=(1000.0,), shift=1.0)
    noise = torch.randn(1, *stream.latent_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        plain = stream.denoise(plan, sampler, noise)
    with_grad = stream.denoise(plan, sampler, noise, grad=True)
    assert with_grad.requires_grad and stream.num_grad_forwards == 1
    torch.testing.assert_close(with_grad.detach(), plain, **TOL)
    with_grad.square().mean().backward()
    weight = model.backbone.transformer.blocks[0].attn1.to_q.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
