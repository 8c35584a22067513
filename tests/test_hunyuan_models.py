"""HunyuanVideo-1.5 as a world model end to end (issue 20), at the tiny size: the preset builds
through the same loader as Wan, trains through every stage of the pipeline, saves, loads by
its transformer class, and runs in gym.make("minwm/World-v0")."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import minwm_env  # noqa: F401  (registers the envs)
from minwm_env.backbones import CausalHunyuan15, CausalWan
from minwm_env.data.latents import EncodeConfig, encode_dataset
from minwm_env.data.render import RenderConfig, render_dataset
from minwm_env.models import backbone_family, load_model


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory):
    from minwm_train.cli import main
    root = tmp_path_factory.mktemp("hyworld")
    render_dataset(root, RenderConfig(num_clips=4, num_frames=17, height=64, width=64, path_kinds=("walk", "turn"),
                                      seed=0), progress=False)
    encode_dataset(root, load_model("tiny").codec, EncodeConfig(), progress=False)
    out = root / "runs"
    main(["pipeline", "--preset", "tiny-hy15", "--data", str(root / "latents"), "--out", str(out), "--until", "stage3",
          "--steps", "2"])
    return out


def test_tiny_hy15_trains_through_every_stage_and_runs_in_the_env(pipeline_out):
    stages = sorted(p.name for p in pipeline_out.iterdir() if (p / "model" / "minwm.json").is_file())
    assert stages[0] == "stage0" and stages[-1] == "stage3" and len(stages) >= 4, stages
    for stage in stages:
        history = [json.loads(line) for line in (pipeline_out / stage / "metrics.jsonl").read_text().splitlines()]
        losses = [v for record in history for k, v in record.items() if k.startswith("loss/")]
        assert losses and np.isfinite(losses).all(), stage
    final = pipeline_out / "stage3" / "model"
    assert backbone_family(final / "transformer") == "hunyuan15"
    model = load_model(final)
    assert isinstance(model.backbone, CausalHunyuan15) and model.backbone.conditioning is not None
    env = gym.make("minwm/World-v0", model=str(final))
    obs, _ = env.reset(seed=0)
    turn = np.zeros(env.action_space.shape, np.float32)
    turn[..., 3] = 6.0  # yaw
    frames = [obs] + [env.step(turn)[0] for _ in range(2)]
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    # trained weights, not a fresh model: they differ from the preset's initialisation
    fresh = load_model("tiny-hy15")
    trained = dict(model.backbone.transformer.named_parameters())
    assert any((p - trained[n]).abs().max() > 0 for n, p in fresh.backbone.transformer.named_parameters())


def test_saved_hy15_model_loads_back_to_the_same_outputs(tmp_path):
    model = load_model("tiny-hy15")
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.backbone, CausalHunyuan15)
    x = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    prompt_a = model.backbone.encode_prompt(torch.zeros(1, 3, 32))
    prompt_b = loaded.backbone.encode_prompt(torch.zeros(1, 3, 32))
    with torch.no_grad():
        a = model.backbone(x, torch.full((1, 2), 500.0), torch.tensor([1, 2]), prompt_a)
        b = loaded.backbone(x, torch.full((1, 2), 500.0), torch.tensor([1, 2]), prompt_b)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert isinstance(load_model("tiny").backbone, CausalWan)


def test_an_unknown_transformer_class_is_named(tmp_path):
    folder = tmp_path / "transformer"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(ValueError, match="FluxTransformer2DModel.*not supported"):
        backbone_family(folder)


def test_full_size_flops_count_on_meta_tensors():
    """benchmarks/flops.py's count for HunyuanVideo-1.5 (Wan2.1's runs in the gpu_suite test):
    8.3B parameters, and a first-chunk FLOP ratio between the linear layers' and attention's."""
    from minwm_env.profiling import count_flops
    hy = count_flops("hy15-8b", num_latent_frames=31, chunk_frames=4, bidir_steps=50, ar_steps=50, fewstep_steps=4)
    assert 8.2e9 < hy["parameters"] < 8.4e9
    # 50 steps x 2 branches / 4 steps = 25 forwards; clip / chunk = 7.75 frames: linear layers alone give 194x,
    # attention (quadratic in tokens) up to 25 x 7.75^2
    assert 25 * 31 / 4 < hy["ratio_bidir_over_ar_fewstep"] < 25 * (31 / 4) ** 2
    assert hy["ratio_with_text"] < hy["ratio_bidir_over_ar_fewstep"]  # the text path is paid once by the causal model


def test_a_model_with_the_hunyuan_vae_saves_loads_and_streams_in_the_env(tmp_path):
    """The HunyuanVideo-1.5 VAE as the codec of a world model: saved, found again by its class
    name with the settings' attention window, and decoding the env's frames chunk by chunk."""
    from diffusers import AutoencoderKLHunyuanVideo15

    from minwm_env.hunyuan_vae import HunyuanVAECodec
    from minwm_env.models import WorldModel
    base = load_model("tiny-hy15", vae_attention_window=3)
    vae = AutoencoderKLHunyuanVideo15(block_out_channels=(16, 16, 32, 64), latent_channels=4, layers_per_block=1,
                                      spatial_compression_ratio=8, temporal_compression_ratio=4)
    WorldModel(base.backbone, HunyuanVAECodec(vae), base.settings).save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    assert isinstance(model.codec, HunyuanVAECodec) and model.codec.attention_window == 3
    env = gym.make("minwm/World-v0", model=model)
    obs, _ = env.reset(seed=1)
    frames = [obs] + [env.step(np.zeros(env.action_space.shape, np.float32))[0] for _ in range(4)]
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) > 1  # the frames come from the decoder, not a constant


def test_the_settings_name_the_default_sampler(tmp_path):
    """minWM's HunyuanVideo-1.5 rolls out with deterministic Euler, its Wan with the few-step
    sampler: a model folder says which (minwm.json ``sampler``), and the env runs it."""
    from minwm_env.generator import StreamingGenerator
    from minwm_env.models import ModelSettings
    from minwm_env.samplers import EulerSampler, FewStepSampler
    model = load_model("tiny-hy15", sampler="euler", sampler_timesteps=(1000.0, 750.0, 500.0, 250.0))
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    sampler = StreamingGenerator(loaded).sampler
    assert isinstance(sampler, EulerSampler) and (sampler.num_steps, sampler.shift, sampler.guidance_scale) == (4, 5.0, 1.0)
    assert isinstance(StreamingGenerator(load_model("tiny")).sampler, FewStepSampler)
    with pytest.raises(ValueError, match="sampler must be one of"):
        ModelSettings.from_dict({"sampler": "unipc"}, "minwm.json")
