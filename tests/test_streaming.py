"""The shared streaming step: training's rollouts stream exactly as the env does.

Stage 3's self-rollout and stage 2c's rolled-out contexts go through the same
:class:`~minwm_env.streaming.ChunkStream` as ``env.step``; these tests hold them to it on the
``default`` preset's settings (warped reference, restarted context, one-frame window), where
the decisions differ most from a plain cache.
"""

import pytest
import torch

from minwm_env import camera
from minwm_env.generator import StreamingGenerator
from minwm_env.samplers import FewStepSampler
from minwm_train.cli import make_stage
from minwm_train.config import preset_config
from minwm_train.stages.common import rollout_actions

from conftest import randomize_

ACTIONS = torch.tensor([[0.02, 0, 0.08, 3, 0, 0], [0, 0, 0.08, -3, 1, 0], [0, 0.01, 0, 4, 0, 0],
                        [0.04, 0, 0.04, 0, -2, 0]])


def _clip(model, num_chunks: int, batch_size: int = 2, seed: int = 0) -> dict:
    """A batch as the training data holds it: start frame first, actions row k moving frame k − 1
    to k (row 0 zero), w2c relative to frame 0, the model's intrinsics."""
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = model.backbone.latent_channels, *model.codec.latent_size(model.settings.height,
                                                                                      model.settings.width)
    num_frames = 1 + 4 * num_chunks
    latents = (torch.rand(batch_size, channels, num_frames, height, width, generator=generator) * 2 - 1)
    steps = ACTIONS[torch.randint(len(ACTIONS), (batch_size, num_frames - 1), generator=generator)]
    actions = torch.cat([torch.zeros(batch_size, 1, 6), steps], dim=1)
    c2w = camera.compose_deltas(steps.double())
    return {"latents": latents, "actions": actions, "w2c": camera.invert_pose(c2w).float(),
            "intrinsics": torch.tensor(model.settings.intrinsics).expand(batch_size, num_frames, 4).clone()}


@pytest.fixture(scope="module")
def dmd_default():
    """Stage 3 on the default preset's settings (random weights, the network not silent)."""
    config = preset_config("default", "stage3", model="default", teacher="default", data="unused", out="unused",
                           dmd_rollout_chunks=3, student_timesteps=(1000.0, 750.0, 500.0, 250.0))
    stage = make_stage(config, torch.device("cpu"))
    model = stage.generator_model
    assert model.settings.warp_reference and model.settings.restart_context and model.settings.window_frames == 1
    randomize_(model.backbone, seed=3, scale=0.3)
    return stage


def _env_stream(stage, batch, seed, timesteps):
    model, config = stage.generator_model, stage.config
    sampler = FewStepSampler(timesteps=timesteps, shift=config.shift)
    stream = StreamingGenerator(model, sampler, batch_size=batch["latents"].shape[0], chunk_frames=config.chunk_frames)
    # stage 3 writes each chunk in a pass of its own; the env folds it into the next chunk's first
    # forward, equal up to rounding (tests/test_fold_writes.py): compare bit for bit unfolded
    stream.stream.fold_writes = False
    stream.reset(seed=seed, start_latents=batch["latents"][:, :, :1], decode=False)
    chunk = config.chunk_frames
    chunks = [stream.next_chunk(batch["actions"][:, 1 + c * chunk:1 + (c + 1) * chunk], decode=False).latents
              for c in range(config.dmd_rollout_chunks)]
    return torch.cat([batch["latents"][:, :, :1], *chunks], dim=2)


@pytest.mark.parametrize("exit_step", [3, 1])
def test_dmd_rollout_without_gradients_equals_the_env_stream(dmd_default, exit_step):
    stage = dmd_default
    batch = _clip(stage.generator_model, stage.config.dmd_rollout_chunks)
    generator = torch.Generator().manual_seed(11)
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().set_state(generator.get_state())))
    with torch.no_grad():
        rollout = stage.rollout(batch, generator, with_grad=False, exit_steps=[exit_step] * 3)
    # an exit at step k is the sampler with the schedule's first k + 1 timesteps
    streamed = _env_stream(stage, batch, seed, tuple(stage.config.student_timesteps[:exit_step + 1]))
    assert torch.equal(rollout, streamed)  # (writing raw chunks into the cache, as stage 3 once did, fails this)
    assert stage.rollout_stats == {"forwards": 3 * (exit_step + 1), "grad_forwards": 0}


def test_dmd_rollout_with_gradients_keeps_only_the_exit_steps(dmd_default):
    stage = dmd_default
    batch = _clip(stage.generator_model, stage.config.dmd_rollout_chunks, seed=1)
    sample = stage.rollout(batch, torch.Generator().manual_seed(2), with_grad=True, exit_steps=[2, 0, 3])
    assert stage.rollout_stats == {"forwards": 3 + 1 + 4, "grad_forwards": 3}
    assert sample.requires_grad
    sample[:, :, 1:].square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.generator_model.backbone.parameters())
    stage.generator_model.backbone.zero_grad(set_to_none=True)
    # without gradients the same rollout gives the same sample (gradients change no numbers)
    with torch.no_grad():
        again = stage.rollout(batch, torch.Generator().manual_seed(2), with_grad=False, exit_steps=[2, 0, 3])
    torch.testing.assert_close(sample.detach(), again, atol=0, rtol=0)


def test_rollout_actions_come_from_the_poses_when_the_clip_has_none(dmd_default):
    model = dmd_default.generator_model
    batch = _clip(model, 2, seed=4)
    from_poses = rollout_actions(model, {k: v for k, v in batch.items() if k != "actions"}, 9)
    torch.testing.assert_close(from_poses, batch["actions"], atol=1e-5, rtol=0)
    assert torch.equal(rollout_actions(model, batch, 5), batch["actions"][:, :5])


def test_dmd_rollout_gradients_are_the_same_with_gradient_checkpointing(dmd_default):
    """Checkpointing recomputes each exit step's forward during backward, after later chunks were
    written into the cache: the forward must read the context it saw (a frozen copy)."""
    stage = dmd_default
    backbone = stage.generator_model.backbone
    batch = _clip(stage.generator_model, stage.config.dmd_rollout_chunks, seed=5)
    grads = []
    for checkpointing in (False, True):
        backbone.gradient_checkpointing = checkpointing
        sample = stage.rollout(batch, torch.Generator().manual_seed(6), with_grad=True, exit_steps=[1, 1, 1])
        sample[:, :, 1:].square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in backbone.parameters() if p.grad is not None]))
        backbone.zero_grad(set_to_none=True)
    backbone.gradient_checkpointing = False
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=0, rtol=0)  # the recomputation repeats the same arithmetic
