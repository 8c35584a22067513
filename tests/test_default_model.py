"""The shipped default world model: what `gym.make("minwm/World-v0")` loads, and that it works.

CI loads the shipped weights (it never retrains them). The quality checks run a few held-out
paths on a scene layout the model never saw (scene seed 100; training used 0..99), so they fail
if the weights are missing, broken, or replaced by an untrained model, and the network must
beat the network-free warped stream (the same model with its network silent).
"""

from __future__ import annotations

from dataclasses import asdict

import gymnasium as gym
import numpy as np
import pytest
import safetensors.torch

import minwm_env  # noqa: F401  (registers the envs)
from minwm_env.envs.ground_truth import GroundTruthEnv
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.eval.evaluator import EvalConfig, Evaluator
from minwm_env.models import DEFAULT_MODEL, SHIPPED_MODELS, load_model

UNSEEN_LAYOUT = 100


def test_world_v0_loads_the_shipped_weights():
    env = gym.make("minwm/World-v0")
    model = env.unwrapped.world_model
    shipped = safetensors.torch.load_file(
        str(SHIPPED_MODELS[DEFAULT_MODEL] / "transformer" / "diffusion_pytorch_model.safetensors"))
    loaded = model.backbone.transformer.state_dict()
    assert set(shipped) <= set(loaded)
    for key, value in shipped.items():
        assert (loaded[key] == value).all(), key
    # the trained settings travel with the weights: 64x64 frames, x0 residual on the last frame
    assert (model.settings.height, model.settings.width) == (64, 64)
    assert model.settings.prediction_type == "x0" and model.settings.residual_reference
    assert model.settings.restart_context and model.settings.window_frames == 1
    assert model.settings.warp_reference and model.settings.warp_depth == 2.0
    assert model.settings.warp_validity and model.settings.memory_frames == 32  # v2 (issues 18, 19)
    assert model.settings.warp_depth_source == "model" and model.depth is not None  # v4: through its own depth
    assert model.settings.residual_gate  # v5: the network draws only what the warp never saw
    assert model.settings.sampler_timesteps == (1000.0,)  # sampled in one step (docs/default_model.md)
    assert model.settings.warp_fill == "net" and model.fill is not None  # v6: the fill net draws the unseen
    assert model.settings.residual_smooth == 2.0  # v6.1: the transformer's correction blurred by 2 px
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.array([0, 0, 0.08, 0, 0, 0], dtype=np.float32))
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    env.close()


def test_the_preset_name_default_is_untrained():
    shipped, untrained = load_model(DEFAULT_MODEL), load_model("default")
    weight = "blocks.0.attn1.to_q.weight"
    assert not (shipped.backbone.transformer.state_dict()[weight]
                == untrained.backbone.transformer.state_dict()[weight]).all()


def _held_out_scores(model) -> dict:
    env = WorldModelEnv(model=model, obs_mode="chunk")
    truth = GroundTruthEnv(scene="room", scene_seed=UNSEEN_LAYOUT, obs_mode="chunk")
    config = EvalConfig(num_paths=2, chunks=4, path_kinds=("turn", "walk"), drift_chunks=8, drift_paths=2, seed=4321)
    return Evaluator(env, truth, config).run(("adherence", "drift", "controllability"))["summary"]


@pytest.fixture(scope="module")
def held_out_scores():
    return _held_out_scores(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def warp_stream_scores():
    """The network-free warped stream: the shipped settings (warp, restart, view memory) on the
    untrained `default` network, whose zero-initialised output layer adds nothing to the warped
    reference (it reads only the colour channels of a reference that carries validity too), so
    every chunk is the last frame reprojected along the command, filled from memory, restarted
    as the model streams. v4 reprojects through its depth net's depth: the silent network keeps
    that net, so this is geometry at its best, not the plane."""
    shipped = load_model(DEFAULT_MODEL)
    # (the silent network adds nothing, gated or not; the untrained preset has no validity input to gate by;
    # the fill net is a network too, so the silent stream leaves never-seen pixels as the warp's border streak)
    silent = load_model("default", depth=shipped.depth,
                        **{**asdict(shipped.settings), "residual_gate": False, "residual_smooth": None,
                           "warp_fill": "border"})
    assert not silent.backbone.transformer.proj_out.weight.any() and not silent.backbone.transformer.proj_out.bias.any()
    return _held_out_scores(silent)


def test_shipped_model_beats_the_network_free_warped_stream(held_out_scores, warp_stream_scores):
    # measured (2026-12-04): v6.1 23.00 dB against its depth-warped stream's 21.97 over 4 chunks; v6 22.85
    # against 21.86 (v5.1 and v5 22.27, v4 22.30, v2: 21.39 vs the plane-warped 20.81, v1 21.15 vs 20.69); the
    # networks must add
    # something over geometry, or it is not a world model
    assert held_out_scores["adherence/psnr_db"] > warp_stream_scores["adherence/psnr_db"] + 0.2


def test_shipped_model_drifts_less_than_the_network_free_warped_stream(held_out_scores, warp_stream_scores):
    # measured (2026-12-04, v6.1): 24.40 dB against the warped stream's 24.03 over 8 chunks (v6: 24.20 against
    # 23.94); every model before v6
    # fell behind it (v5.1 23.71, v5 23.54, v4 23.15, v2 21.42 vs 22.14, v1 20.29 vs 21.49)
    assert held_out_scores["drift/psnr_db"] > warp_stream_scores["drift/psnr_db"]


# The checks below guard the geometry and the weights (they fail for a broken warp, broken or
# missing weights, ignored actions), but the warped stream alone passes them too (measured:
# 20.69 vs 16.24 dB over repeat-start, 21.49 vs 16.42 over 8 chunks, +5.4 dB over negated
# actions, rotation error 0.24 deg, direction agreement 1.0): only the two tests above are the networks'.


def test_shipped_model_beats_repeating_the_start_frame(held_out_scores):
    # measured when shipped (v4): 22.3 vs 16.2 dB (4 chunks), drift 23.2 vs 16.4 dB over 8 chunks
    assert held_out_scores["adherence/psnr_db"] > held_out_scores["adherence/baseline_psnr_db"] + 3
    assert held_out_scores["drift/psnr_db"] > held_out_scores["drift/baseline_psnr_db"] + 2


def test_shipped_model_follows_its_actions(held_out_scores):
    # the same start and noise with every action negated lands clearly further from the truth
    # (measured when shipped, v4: 22.3 vs 16.6 dB), and alternating turns / side steps are followed
    assert held_out_scores["adherence/psnr_db"] > held_out_scores["adherence/mirrored_psnr_db"] + 3
    assert held_out_scores["controllability/direction_agreement"] >= 0.75


def test_shipped_model_turns_as_far_as_it_is_told(held_out_scores):
    # 12° a step commanded on the turning paths; the model before the warped reference was off by
    # 10-11°, v4 by 0.21° when shipped (the truth's own frames: ~0.3°, the estimator's floor)
    assert held_out_scores["adherence/rotation_error_deg"] < 3.0
