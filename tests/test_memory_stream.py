"""The view memory inside the streaming step and the env (issue 19): off changes nothing, on it
brings back what was seen, reset clears it, vector rows keep their own."""

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from minwm_env.envs.ground_truth import GroundTruthEnv
from minwm_env.envs.world_model import WorldModelEnv, WorldModelVectorEnv, memory_frames
from minwm_env.eval import metrics
from minwm_env.eval.rollout import paired_rollout
from minwm_env.models import ModelSettings, WorldModel, load_model
from minwm_env.streaming import context_frame
from minwm_env.world.paths import random_start

TURN = np.array([0.0, 0, 0, 6.0, 0, 0], np.float32)  # 24° a step


@pytest.fixture(scope="module")
def shipped():
    return load_model("minwm-default")


def _rollout(env, actions, seed=0, image=None):
    options = None if image is None else {"image": image}
    frames = [env.reset(seed=seed, options=options)[0]]
    for action in actions:
        frames.append(env.step(action)[0])
    return np.stack(frames)


def test_memory_off_streams_exactly_as_before(shipped):
    """memory=False on the shipped model (memory on by default) streams exactly as the same
    weights with no memory setting at all, and differs from memory on (turning back here lets
    the memory fill something)."""
    actions = [np.repeat(a[None], 4, 0) for a in (TURN, TURN, -TURN, -TURN)]
    assert shipped.settings.memory_frames > 0
    without = WorldModel(shipped.backbone, shipped.codec, replace(shipped.settings, memory_frames=0), shipped.depth,
                         shipped.fill)
    plain = _rollout(WorldModelEnv(model=without, obs_mode="chunk"), actions)
    off = _rollout(WorldModelEnv(model=shipped, obs_mode="chunk", memory=False), actions)
    on = _rollout(WorldModelEnv(model=shipped, obs_mode="chunk"), actions)
    assert np.array_equal(plain, off)
    assert not np.array_equal(on, off)


def test_memory_brings_back_a_view_after_looking_away(shipped):
    """Turn 96° away and back on a held-out layout: with a memory that only fills the last frame's
    gaps (no sharpening) the last frame is closer to the truth (which returns exactly to its first
    frame) than without, and the way out is the same."""
    truth = GroundTruthEnv(scene="room", scene_seed=100, obs_mode="chunk")
    deltas = np.repeat(np.array([TURN] * 4 + [-TURN] * 4), 4, axis=0)  # per latent frame
    start = random_start(truth.unwrapped.scene, random.Random(3))
    results = {}
    for memory in (False, True):
        env = WorldModelEnv(model=_sharpening(shipped, None), obs_mode="chunk", memory=memory)
        model_run, truth_run = paired_rollout(env, truth, deltas, start_pose=start, seed=3)
        results[memory] = (model_run.all_frames(), truth_run.all_frames())
    (without, truth_frames), (with_memory, _) = results[False], results[True]
    out = len(truth_frames) // 2
    assert np.array_equal(without[:out], with_memory[:out])  # nothing to fill on the way out is changed
    assert float(metrics.psnr(with_memory[-1:], truth_frames[-1:])[0]) > float(
        metrics.psnr(without[-1:], truth_frames[-1:])[0]) + 1.0


def test_reset_clears_the_memory_and_rows_keep_their_own(shipped):
    actions = [np.repeat(a[None], 4, 0) for a in (TURN, TURN, -TURN, -TURN)]
    single = WorldModelEnv(model=shipped, obs_mode="chunk", memory=True)
    first = _rollout(single, actions, seed=0)
    again = _rollout(single, actions, seed=0)  # a reset forgets the previous episode
    assert np.array_equal(first, again)
    starts = [single.reset(seed=s)[0][-1] for s in (5, 6)]  # two rendered start images
    singles = [_rollout(single, actions, seed=s, image=img) for s, img in zip((5, 6), starts)]
    vector = WorldModelVectorEnv(2, model=shipped, obs_mode="chunk", memory=True)
    obs, _ = vector.reset(seed=[5, 6], options={"image": np.stack(starts)})
    frames = [obs]
    for action in actions:
        frames.append(vector.step(np.stack([action, action]))[0])
    frames = np.stack(frames, 1)  # (rows, steps + 1, ...)
    for row in range(2):
        assert np.abs(frames[row].astype(int) - singles[row].astype(int)).max() <= 1


def test_memory_argument_is_checked():
    settings = ModelSettings()
    assert memory_frames(None, settings) == 0 and memory_frames(True, settings) == 32
    assert memory_frames(False, ModelSettings(memory_frames=8, warp_reference=True, residual_reference=True)) == 0
    assert memory_frames(5, settings) == 5
    for bad in (-1, 2.5, "yes"):
        with pytest.raises(ValueError, match="memory must be"):
            memory_frames(bad, settings)
    with pytest.raises(ValueError, match=r"needs a\s+warp_reference model"):
        load_model("tiny").stream(memory_frames=4)
    with pytest.raises(ValueError, match="memory_frames with memory_mode='reference' needs warp_reference"):
        ModelSettings.from_dict({"memory_frames": 4}, "minwm.json")


def test_stage2c_learns_with_the_reference_the_stream_fills_from_memory():
    """With rollout_memory_frames, stage 2c's learned chunk gets the reference the env would
    stream with: the context warped and filled from the rollout's memory (turning back towards
    the start frame, which the memory holds)."""
    from minwm_env import camera
    from minwm_train.cli import make_stage
    from minwm_train.config import preset_config
    from minwm_train.engine import step_generator

    from conftest import randomize_

    config = preset_config("default-v2b", "stage2c", data="unused", out="unused", rollout_memory_frames=8,
                           student_timesteps=(1000.0,))
    stage = make_stage(config, torch.device("cpu"))
    model = stage.model
    randomize_(model.backbone, seed=2, scale=0.2)
    generator = torch.Generator().manual_seed(0)
    steps = torch.tensor([[0.0, 0, 0, 6.0, 0, 0]] * 4 + [[0.0, 0, 0, -6.0, 0, 0]] * 4)
    num_frames = 1 + len(steps)
    actions = torch.cat([torch.zeros(1, 6), steps])[None].repeat(2, 1, 1)
    c2w = camera.compose_deltas(steps.double())[None].repeat(2, 1, 1, 1)
    batch = {"latents": torch.rand(2, 192, num_frames, 16, 16, generator=generator) * 2 - 1, "actions": actions,
             "w2c": camera.invert_pose(c2w).float(),
             "intrinsics": torch.tensor(model.settings.intrinsics).expand(2, num_frames, 4).clone()}
    context = stage.rollout_context(batch, step_generator(0, 1), 1)
    filled = stage.memory_reference(batch, context_frame(model, context), 1)
    planned = stage.last_stream.stream.plan(actions[:, 5:9]).reference  # what the env would stream with
    torch.testing.assert_close(filled, planned, atol=1e-4, rtol=0)
    # without memory: the context frame (latent frame 4) warped into frames 5..8 alone
    plain = model.residual_reference(context_frame(model, context), c2w[:, 4:5], c2w[:, 4:8], c2w[:, 5:9],
                                     batch["intrinsics"][:, 5:9].double())
    assert float(plain[:, 192:].mean()) < float(filled[:, 192:].mean()) - 0.05  # memory filled part of the gaps


def _sharpening(shipped, distance=0.5):
    return WorldModel(shipped.backbone, shipped.codec, replace(shipped.settings, memory_sharpen=distance),
                      shipped.depth, shipped.fill)


def test_sharpening_memory_warps_a_still_view_from_the_start_frame_alone(shipped):
    """Standing still with memory_sharpen, every chunk's reference comes straight from the start
    frame: each pixel has been resampled once however many chunks pass (without it, the stream
    tracks nothing and warps its last frame), and the frames stay the start frame."""
    env = WorldModelEnv(model=_sharpening(shipped), obs_mode="chunk")
    stream = env.unwrapped._world.generator.stream
    first, _ = env.reset(seed=4)
    assert stream.sharpens and float(stream.generation.abs().max()) == 0
    for _ in range(3):
        frames = env.step(np.zeros(6, np.float32))[0]
    assert torch.allclose(stream.generation, torch.ones(())), stream.generation.unique()
    assert np.abs(frames.astype(int) - first[-1].astype(int)).max() <= 1
    assert shipped.settings.memory_sharpen is not None  # the shipped model sharpens
    plain = WorldModelEnv(model=_sharpening(shipped, None), obs_mode="chunk").unwrapped._world.generator.stream
    assert not plain.sharpens


def test_sharpening_memory_brings_a_view_back_closer_than_filling_alone(shipped):
    """Turn 96° away and back on a held-out layout: the last frame, warped from the start frame
    where it sees, is closer to the truth than with the memory only filling the last frame's gaps."""
    truth = GroundTruthEnv(scene="gallery", scene_seed=100, obs_mode="chunk")
    deltas = np.repeat(np.array([TURN] * 4 + [-TURN] * 4), 4, axis=0)
    start = random_start(truth.unwrapped.scene, random.Random(3))
    scores = {}
    for name, model in (("fill", _sharpening(shipped, None)), ("sharpen", _sharpening(shipped))):
        model_run, truth_run = paired_rollout(WorldModelEnv(model=model, obs_mode="chunk"), truth, deltas,
                                              start_pose=start, seed=3)
        scores[name] = float(metrics.psnr(model_run.all_frames()[-1:], truth_run.all_frames()[-1:])[0])
    assert scores["sharpen"] > scores["fill"] + 1.0, scores  # measured: exact (inf) against 36.9 dB


def test_each_frame_s_depth_is_computed_once(shipped):
    """The depth net runs once a frame the stream keeps (the start frame, each chunk's last):
    the warp of the next chunk and the memory share it, on a path that turns back so the memory
    is used. The fill net's drawing is a new image: a chunk that draws adds one call for it (to
    carry the drawing into the chunk's other cameras), and only such a chunk."""
    def depth_calls(model):
        calls = []
        hook = model.depth.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        try:
            env = WorldModelEnv(model=model, obs_mode="chunk")
            env.reset(seed=2)
            for action in (TURN, TURN, -TURN, -TURN):
                env.step(np.repeat(action[None], 4, 0))
        finally:
            hook.remove()
        return calls

    border = _sharpening(shipped)
    border = WorldModel(border.backbone, border.codec, replace(border.settings, warp_fill="border"), border.depth)
    assert depth_calls(border) == [1] * 5
    drawn = depth_calls(_sharpening(shipped))
    # turning away twice brings never-seen pixels into both chunks; turning back, the memory covers them
    assert drawn == [1] * 7, drawn


def test_sharpening_inputs_are_checked(shipped):
    base = {"residual_reference": True, "warp_reference": True, "memory_frames": 4}
    for bad in ({"memory_sharpen": -1.0}, {"memory_sharpen": 0.5, "memory_mode": "context", "warp_reference": False}):
        with pytest.raises(ValueError, match="memory_sharpen must be >= 0"):
            ModelSettings.from_dict({**base, **bad}, "minwm.json")
    assert ModelSettings.from_dict({**base, "memory_sharpen": 0.5}, "minwm.json").memory_sharpen == 0.5
    stream = WorldModelEnv(model=_sharpening(shipped), obs_mode="chunk").unwrapped._world.generator.stream
    c2w = torch.eye(4, dtype=torch.float64)[None, None].repeat(1, 4, 1, 1)
    k = torch.tensor(shipped.settings.intrinsics, dtype=torch.float64).expand(1, 4, 4)
    reference = torch.zeros(1, shipped.backbone.latent_channels, 1, 16, 16)
    with pytest.raises(ValueError, match="generation must have shape"):
        shipped.residual_reference(reference, c2w[:, :1], c2w, c2w, k, stream.memory, 2,
                                   generation=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="generation is what a view memory sharpens by"):
        shipped.residual_reference(reference, c2w[:, :1], c2w, c2w, k, None, 0, generation=torch.zeros(1, 1, 64, 64))
