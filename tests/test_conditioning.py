"""Camera and action branches: invisible at initialisation, exact under streaming, trainable."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from conftest import randomize_
from minwm_env import camera
from minwm_env.backbones import CausalWan, causal_frame_mask
from minwm_env.conditioning import (ActionSpec, ConditioningConfig, FrameConditions, camera_action_spec,
                                    diff_drive_action_spec, read_conditioning_config)

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)
KEYS_SPEC = ActionSpec(names=("forward", "left", "right"), low=(0, 0, 0), high=(1, 1, 1), discrete=True)
CONFIGS = {
    "prope": ConditioningConfig(camera="prope"),
    "plucker": ConditioningConfig(camera="plucker"),
    "camera-action": ConditioningConfig(action_spec=camera_action_spec()),
    "diff-drive": ConditioningConfig(action_spec=diff_drive_action_spec()),
    "discrete-keys": ConditioningConfig(action_spec=KEYS_SPEC),
}


def make(config, seed=0):
    torch.manual_seed(seed)
    return CausalWan(WanTransformer3DModel(**TINY), conditioning=config).eval()


def conditions_for(config, batch, num_frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    deltas = torch.cat([torch.randn(batch, num_frames - 1, 3, generator=g) * 0.1,
                        torch.randn(batch, num_frames - 1, 3, generator=g) * 4], dim=-1).double()
    w2c = camera.invert_pose(camera.compose_deltas(deltas)).float()
    intrinsics = camera.intrinsics_from_fov(60, 64, 64).float().expand(batch, num_frames, 4)
    actions = None
    spec = config.action_spec
    if spec is not None:
        low, high = torch.tensor(spec.low), torch.tensor(spec.high)
        actions = low + (high - low) * torch.rand(batch, num_frames, spec.dim, generator=g)
        if spec.discrete:
            actions = actions.round()
    return FrameConditions(w2c, intrinsics, actions)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_branches_leave_the_backbone_unchanged_at_initialisation(name):
    plain, conditioned = make(None), make(CONFIGS[name])
    conditioned.transformer.load_state_dict(plain.transformer.state_dict())
    # Per-frame timesteps: the plain model then takes the same per-token modulation path that
    # action embeddings need, so the comparison can be exact.
    x, t = torch.randn(2, 4, 3, 8, 8), torch.tensor([[300.0, 310.0, 320.0], [800.0, 700.0, 600.0]])
    prompt = plain.encode_prompt(torch.randn(2, 5, 32))
    with torch.no_grad():
        reference = plain(x, t, torch.arange(3), prompt)
        ours = conditioned(x, t, torch.arange(3), prompt, conditions=conditions_for(CONFIGS[name], 2, 3))
    torch.testing.assert_close(ours, reference, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_streaming_with_cache_equals_full_forward_with_live_branches(name):
    config = CONFIGS[name]
    backbone = make(config, seed=1)
    randomize_(backbone.conditioning, seed=2, scale=2.0)
    batch, chunk, num_chunks = 2, 2, 3
    n = chunk * num_chunks
    torch.manual_seed(3)
    clean, noisy = torch.randn(batch, 4, n, 8, 8), torch.randn(batch, 4, n, 8, 8)
    t_noisy = (torch.rand(batch, num_chunks) * 1000).repeat_interleave(chunk, dim=1)
    cond = conditions_for(config, batch, n, seed=4)
    positions, blocks = torch.arange(n), torch.arange(n) // chunk
    is_noisy = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    mask = causal_frame_mask(torch.cat([positions, positions]), torch.cat([blocks, blocks]), noisy=is_noisy,
                             window_frames=3, sink_frames=1)
    with torch.no_grad():
        prompt = backbone.encode_prompt(torch.randn(batch, 5, 32))
        full = backbone(torch.cat([clean, noisy], 2), torch.cat([torch.zeros(batch, n), t_noisy], 1),
                        torch.cat([positions, positions]), prompt, frame_mask=mask,
                        conditions=FrameConditions.cat([cond, cond]))[:, :, n:]
        without_branch = make(config, seed=1)(torch.cat([clean, noisy], 2), torch.cat([torch.zeros(batch, n), t_noisy], 1),
                                              torch.cat([positions, positions]), prompt, frame_mask=mask,
                                              conditions=FrameConditions.cat([cond, cond]))[:, :, n:]
        cache = backbone.new_cache(batch_size=batch, latent_height=8, latent_width=8, window_frames=3,
                                   sink_frames=1, max_new_frames=chunk)
        outputs = []
        for c in range(num_chunks):
            frames = slice(c * chunk, (c + 1) * chunk)
            part = cond.frames(frames)
            outputs.append(backbone(noisy[:, :, frames], t_noisy[:, frames], positions[frames], prompt,
                                    kv_cache=cache, conditions=part))
            backbone(clean[:, :, frames], torch.zeros(batch, chunk), positions[frames], prompt, kv_cache=cache,
                     cache_write=True, conditions=part)
    torch.testing.assert_close(torch.cat(outputs, 2), full, atol=1e-5, rtol=0)
    assert (full - without_branch).abs().max() > 1e-2  # the live branch does change the output


def test_prope_depends_only_on_relative_poses():
    backbone = make(CONFIGS["prope"], seed=1)
    randomize_(backbone.conditioning, seed=2, scale=2.0)
    x = torch.randn(1, 4, 3, 8, 8)
    prompt = backbone.encode_prompt(torch.zeros(1, 1, 32))
    cond = conditions_for(CONFIGS["prope"], 1, 3, seed=5)
    moved = camera.delta_to_matrix(torch.tensor([0.3, -0.2, 0.5, 20.0, -10.0, 5.0])).float()
    shifted = FrameConditions(cond.w2c @ camera.invert_pose(moved).float(), cond.intrinsics)  # same relative poses
    with torch.no_grad():
        a = backbone(x, torch.full((1, 3), 500.0), torch.arange(3), prompt, conditions=cond)
        b = backbone(x, torch.full((1, 3), 500.0), torch.arange(3), prompt, conditions=shifted)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_user_action_spec_trains_on_a_frozen_backbone(tmp_path):
    spec = diff_drive_action_spec()
    backbone = make(ConditioningConfig(action_spec=spec, action_hidden_dim=32), seed=0)
    backbone.transformer.requires_grad_(False)
    frozen = {k: v.clone() for k, v in backbone.transformer.state_dict().items()}
    optimizer = torch.optim.Adam(backbone.conditioning.parameters(), lr=3e-3)
    prompt = backbone.encode_prompt(torch.zeros(8, 1, 32))
    pattern = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(40):
        actions = spec.validate((torch.rand(8, 2, 2, generator=g) * 2 - 1) * torch.tensor([0.16, 6.0]))
        target = actions[:, :, 0].view(8, 1, 2, 1, 1) / 0.16 * pattern  # the clip depends on the speed v
        x = torch.randn(8, 4, 2, 8, 8, generator=g)
        out = backbone(x, torch.full((8, 2), 500.0), torch.arange(2), prompt,
                       conditions=FrameConditions(actions=actions))
        loss = (out - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    for k, v in backbone.transformer.state_dict().items():
        assert torch.equal(v, frozen[k]), k

    backbone.conditioning.save(tmp_path / "cond")
    config = read_conditioning_config(tmp_path / "cond")
    assert config.action_spec == spec
    fresh = make(config, seed=0)
    fresh.conditioning.load_weights(tmp_path / "cond")
    for k, v in backbone.conditioning.state_dict().items():
        assert torch.equal(v, fresh.conditioning.state_dict()[k])


def test_action_validation_errors_and_clipping():
    spec = camera_action_spec()
    with pytest.raises(ValueError, match="NaN"):
        spec.validate(torch.tensor([0, 0, float("nan"), 0, 0, 0]))
    with pytest.raises(ValueError, match="inf"):
        spec.validate(torch.tensor([0, 0, float("inf"), 0, 0, 0]))
    with pytest.raises(ValueError, match="last dimension 6"):
        spec.validate(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="'yaw' = 30 is outside its bounds"):
        spec.validate(torch.tensor([0, 0, 0, 30.0, 0, 0]))
    with pytest.raises(TypeError, match="real-valued"):
        spec.validate(torch.zeros(6, dtype=torch.bool))
    clipped = camera_action_spec(clip=True).validate(torch.tensor([0, 0, 1.0, 30.0, -30.0, 0]))
    assert clipped.tolist() == pytest.approx([0, 0, 0.16, 6.0, -6.0, 0])
    with pytest.raises(ValueError, match="integers"):
        KEYS_SPEC.validate(torch.tensor([0.5, 0, 1]))
    feats = KEYS_SPEC.features(KEYS_SPEC.validate(torch.tensor([1, 0, 1])))
    assert feats.tolist() == [0, 1, 1, 0, 0, 1]


def test_spec_and_config_errors():
    with pytest.raises(ValueError, match="below high"):
        ActionSpec(names=("a",), low=(1,), high=(0,))
    with pytest.raises(ValueError, match="one entry per component"):
        ActionSpec(names=("a", "b"), low=(0,), high=(1,))
    with pytest.raises(ValueError, match="camera must be"):
        ConditioningConfig(camera="rays")
    backbone = make(CONFIGS["prope"])
    prompt = backbone.encode_prompt(torch.zeros(1, 1, 32))
    with pytest.raises(ValueError, match="pass FrameConditions"):
        backbone(torch.zeros(1, 4, 1, 8, 8), torch.zeros(1, 1), torch.arange(1), prompt)
    action_model = make(CONFIGS["diff-drive"])
    with pytest.raises(ValueError, match=r"actions must be \(1, 1, 2\)"):
        action_model(torch.zeros(1, 4, 1, 8, 8), torch.zeros(1, 1), torch.arange(1), prompt,
                     conditions=FrameConditions(actions=torch.zeros(1, 1, 3)))
