"""Presets, save → load round trips, and clear errors for broken model folders."""

import json
import shutil

import pytest
import torch

from conftest import randomize_
from minwm_env.generator import StreamingGenerator
from minwm_env.models import PRESETS, build_preset, load_model


def rollout(model, seed=3):
    gen = StreamingGenerator(model)
    first = gen.reset(seed=seed, image=torch.zeros(1, 3, model.settings.height, model.settings.width))
    return torch.cat([first] + [gen.next_chunk().frames for _ in range(2)], dim=2)


@pytest.fixture
def saved(tmp_path, tiny_model):
    randomize_(tiny_model.backbone, seed=6)
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", tiny_model


def test_save_pretrained_loads_back_identically(saved):
    folder, model = saved
    loaded = load_model(folder)
    assert loaded.settings == model.settings
    for a, b in zip(model.backbone.state_dict().values(), loaded.backbone.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(rollout(model), rollout(loaded))


def test_settings_are_saved_and_overridable(saved):
    folder, _ = saved
    assert json.loads((folder / "minwm.json").read_text())["height"] == 64
    assert load_model(folder, chunk_frames=2).settings.chunk_frames == 2


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")


def test_missing_vae_folder_names_it(saved):
    folder, _ = saved
    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match="vae"):
        load_model(folder)


def test_mismatched_config_names_the_config(saved):
    folder, _ = saved
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_layers"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match .*config.json.*missing"):
        load_model(folder)
    config["num_layers"], config["ffn_dim"] = 2, 48
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_model(folder)


def test_wrong_class_in_config(saved):
    folder, _ = saved
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "HunyuanVideoTransformer3DModel"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="HunyuanVideoTransformer3DModel.* is not supported; supported: .*WanTransformer3DModel"):
        load_model(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_weights_name_the_file(saved, damage):
    folder, _ = saved
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64 + data[64:])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_model(folder)


def test_unknown_settings_key_is_rejected(saved):
    folder, _ = saved
    path = folder / "minwm.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hieght": 3}))
    with pytest.raises(ValueError, match="hieght"):
        load_model(folder)


def test_unknown_preset_lists_presets():
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_model("tinny")


def test_full_size_preset_has_the_wan21_architecture():
    config = PRESETS["wan21-1.3b"].transformer
    assert config["num_layers"] == 30 and config["num_attention_heads"] * config["attention_head_dim"] == 1536
    with torch.device("meta"):
        from diffusers import WanTransformer3DModel
        model = WanTransformer3DModel(**config)
    num_params = sum(p.numel() for p in model.parameters())
    assert 1.3e9 < num_params < 1.5e9


def test_half_precision_keeps_time_embedding_in_float32():
    model = build_preset("tiny").to(dtype=torch.bfloat16)
    transformer = model.backbone.transformer
    assert transformer.patch_embedding.weight.dtype == torch.bfloat16
    assert transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert transformer.blocks[0].scale_shift_table.dtype == torch.float32
    frames = rollout(model)
    assert torch.isfinite(frames.float()).all()


def test_conditioning_saves_with_the_model_and_apart_from_it(tmp_path):
    from minwm_env.conditioning import ConditioningConfig, diff_drive_action_spec

    config = ConditioningConfig(camera="plucker", action_spec=diff_drive_action_spec(), action_hidden_dim=16)
    model = build_preset("tiny", conditioning=config)
    randomize_(model.backbone.conditioning, seed=3)
    model.save_pretrained(tmp_path / "full")
    loaded = load_model(tmp_path / "full")
    assert loaded.backbone.conditioning_config == config
    for k, v in model.backbone.conditioning.state_dict().items():
        assert torch.equal(v, loaded.backbone.conditioning.state_dict()[k])
    # A conditioner trained on its own attaches to a preset backbone.
    model.save_conditioning(tmp_path / "branch")
    attached = load_model("tiny", conditioning=tmp_path / "branch")
    for k, v in model.backbone.conditioning.state_dict().items():
        assert torch.equal(v, attached.backbone.conditioning.state_dict()[k])
    (tmp_path / "branch" / "conditioning.safetensors").write_bytes(b"broken")
    with pytest.raises(ValueError, match="conditioning.safetensors"):
        load_model("tiny", conditioning=tmp_path / "branch")


def test_default_architecture_saves_and_loads_with_its_codec(tmp_path):
    model = build_preset("default")
    assert model.settings.prediction_type == "x0" and model.backbone.residual_reference
    assert type(model.codec).__name__ == "SpaceToDepthCodec"
    # A new residual model starts as "nothing changes": its output is the reference.
    x = torch.randn(1, 192, 4, 16, 16)
    reference = torch.randn(1, 192, 1, 16, 16)
    with torch.no_grad():
        out = model.backbone(x, torch.full((1, 4), 500.0), torch.arange(4),
                             model.backbone.encode_prompt(model.backbone.null_prompt_embeds(1)), reference=reference)
    torch.testing.assert_close(out, reference.expand_as(out))
    with pytest.raises(ValueError, match="reference"):
        model.backbone(x, torch.full((1, 4), 500.0), torch.arange(4),
                       model.backbone.encode_prompt(model.backbone.null_prompt_embeds(1)))
    randomize_(model.backbone, seed=2)
    model.save_pretrained(tmp_path / "default")
    assert (tmp_path / "default" / "codec.json").is_file() and not (tmp_path / "default" / "vae").exists()
    loaded = load_model(tmp_path / "default")
    assert loaded.backbone.residual_reference and type(loaded.codec).__name__ == "SpaceToDepthCodec"
    assert torch.equal(rollout(model), rollout(loaded))
