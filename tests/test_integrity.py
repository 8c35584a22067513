"""Weights and logs that cannot lie: damaged files stop the load naming the file, NaN stops training
naming the step, nothing non-finite is exported, a resumed run logs each step once (issue 16)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

from conftest import randomize_
from minwm_env.conditioning import ConditioningConfig
from minwm_env.data.latents import EncodeConfig, encode_dataset
from minwm_env.data.render import RenderConfig, render_dataset
from minwm_env.integrity import MANIFEST_FILE, check_files, read_manifest, write_manifest
from minwm_env.models import SHIPPED_MODELS, build_preset, load_model
from minwm_train.cli import make_stage, train
from minwm_train.config import preset_config
from minwm_train.data import LatentClips
from minwm_train.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    render_dataset(root, RenderConfig(num_clips=2, num_frames=17, height=64, width=64, path_kinds=("walk", "turn"),
                                      seed=0), progress=False)
    encode_dataset(root, load_model("tiny").codec, EncodeConfig(), progress=False)
    return root / "latents"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """A tiny stage-0 run of 2 steps with EMA, checkpointed at step 2; tests copy it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    config = preset_config("tiny", "stage0", data=str(data_dir), out=str(out), steps=2, checkpoint_every=2,
                           ema_decay=0.9)
    train(config, "cpu")
    return config


def copy_run(config, destination):
    shutil.copytree(config.out, destination)
    return replace(config, out=str(destination))


def damage(path, fill: bytes = b"\xff"):
    """4 KB of ``fill`` written into the middle of ``path``, past a safetensors header."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - 2048
    if path.suffix == ".safetensors":
        assert start >= 8 + int.from_bytes(data[:8], "little"), "the damage must hit tensor bytes, not the header"
    assert start > 0
    data[start:start + 4096] = fill * 4096
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["modules.safetensors", "ema.safetensors", "optimizer-model.pt"])
def test_damaged_checkpoint_stops_the_resume_naming_the_file(tmp_path, finished_run, name):
    config = copy_run(finished_run, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    damage(checkpoint / name)
    with pytest.raises(ValueError, match=rf"{name} is damaged: its sha256 is [0-9a-f]{{64}}, but {MANIFEST_FILE} "
                                         rf"recorded [0-9a-f]{{64}}"):
        train(replace(config, steps=4), "cpu")
    assert not (tmp_path / "run" / "checkpoints" / "step-000004").exists()


def test_checkpoint_without_manifest_still_refuses_nan(tmp_path, finished_run):
    """A checkpoint from before manifests resumes with the content checks alone: 0xFF bytes are NaN."""
    config = copy_run(finished_run, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    (checkpoint / MANIFEST_FILE).unlink()
    damage(checkpoint / "modules.safetensors")
    with pytest.raises(ValueError, match=r"modules.safetensors holds NaN or inf in backbone/\S+ \(\d+ of \d+ values\)"):
        train(replace(config, steps=4), "cpu")


def test_checkpoints_record_every_weight_file(finished_run):
    checkpoint = f"{finished_run.out}/checkpoints/step-000002"
    assert sorted(read_manifest(checkpoint)) == ["ema.safetensors", "modules.safetensors", "optimizer-model.pt"]
    assert check_files(checkpoint, sorted(read_manifest(checkpoint)))


class Payload:
    """Any class: torch.load(weights_only=True) refuses to rebuild it."""


def test_pickle_bearing_optimizer_file_gets_our_message(tmp_path, finished_run):
    config = copy_run(finished_run, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    torch.save({"state": {0: Payload()}, "param_groups": []}, checkpoint / "optimizer-model.pt")
    with pytest.raises(ValueError, match="optimizer-model.pt is damaged"):  # not the bytes that were written
        train(replace(config, steps=4), "cpu")
    write_manifest(checkpoint)  # a manifest that agrees: the file is read, and refused
    with pytest.raises(ValueError, match="optimizer-model.pt is not a file of tensors.*arbitrary code") as caught:
        train(replace(config, steps=4), "cpu")
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert not any("weights_only" in message for message in chain), chain


@pytest.fixture
def saved_model(tmp_path):
    """The tiny preset (Wan VAE codec) with PRoPE branches, every weight non-trivial, saved."""
    model = build_preset("tiny", conditioning=ConditioningConfig(camera="prope"))
    randomize_(model.backbone, seed=4)
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


WEIGHT_FILES = ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "conditioning/conditioning.safetensors"]


@pytest.mark.parametrize("fill", [b"\xff", b"\x00"], ids=["0xff", "zeros"])
@pytest.mark.parametrize("name", WEIGHT_FILES)
def test_damaged_model_folder_fails_to_load_naming_the_file(saved_model, name, fill):
    """Zeros are finite: only the hash tells them from weights."""
    folder, _ = saved_model
    damage(folder / name, fill)
    with pytest.raises(ValueError, match=rf"{name} is damaged: its sha256"):
        load_model(folder)


def test_folder_without_manifests_loads_with_the_content_checks(saved_model):
    """Like a diffusers-format Wan from the hub: no manifests, so it loads as it is, unless a
    tensor holds NaN or inf."""
    folder, model = saved_model
    for manifest in folder.glob(f"*/{MANIFEST_FILE}"):
        manifest.unlink()
    loaded = load_model(folder)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    damage(folder / WEIGHT_FILES[0])
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model.safetensors holds NaN or inf in \S+ \(\d+ of"):
        load_model(folder)


def test_saved_model_records_every_weight_file(saved_model):
    folder, _ = saved_model
    for name in WEIGHT_FILES:
        assert list(read_manifest((folder / name).parent)) == [(folder / name).name]


@pytest.mark.parametrize("part", ["transformer", "conditioning"])
def test_non_finite_model_refuses_export(tmp_path, part):
    model = build_preset("tiny", conditioning=ConditioningConfig(camera="prope"))
    module = model.backbone.transformer if part == "transformer" else model.backbone.conditioning
    name, param = next(iter(module.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=rf"refusing to save a model with NaN or inf weights .*{part}\.{name} \(1 of"):
        model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model").exists()
    if part == "conditioning":
        with pytest.raises(ValueError, match=rf"refusing to save conditioning branches .*{name} \(1 of"):
            model.save_conditioning(tmp_path / "branch")
        assert not (tmp_path / "branch").exists()


def nan_at(stage, step: int, into: str):
    """Make ``stage``'s loss at ``step`` see NaN: in the data ("data": the loss is NaN) or only in
    the gradients ("gradient": sqrt at 0 has an infinite slope, the loss stays finite)."""
    original = stage.loss

    def loss(optimizer, batch, at, generator):
        if at == step and into == "data":
            batch = {**batch, "latents": batch["latents"] * float("nan")}
        value, logs = original(optimizer, batch, at, generator)
        if at == step and into == "gradient":
            value = value + (next(stage.model.backbone.parameters()) * 0).sum().sqrt()
        return value, logs

    stage.loss = loss


def run_with_nan(tmp_path, data_dir, into: str, **overrides):
    config = preset_config("tiny", "stage0", data=str(data_dir), out=str(tmp_path / "run"), steps=4,
                           checkpoint_every=1, keep_checkpoints=4, **overrides)
    stage = make_stage(config, torch.device("cpu"))
    nan_at(stage, 2, into)
    return config, stage, Trainer(config, stage, LatentClips(config.data, config.num_latent_frames))


def test_nan_loss_stops_training_naming_the_step(tmp_path, data_dir):
    config, _, trainer = run_with_nan(tmp_path, data_dir, "data")
    with pytest.raises(FloatingPointError, match=r"step 2: the 'model' update's loss is not finite: loss/flow = nan"):
        trainer.run()
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-000001", "step-000002"]  # written before the damage, none after
    assert not (tmp_path / "run" / "model").exists()
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [0, 1]


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0], ids=["clipped", "unclipped"])
def test_nan_gradients_stop_training_before_a_checkpoint(tmp_path, data_dir, max_grad_norm):
    """The loss is finite, its gradients are not: with clipping the norm tells at once; without,
    the weights turn NaN and the checkpoint after the update refuses them."""
    config, stage, trainer = run_with_nan(tmp_path, data_dir, "gradient", max_grad_norm=max_grad_norm)
    message = (r"step 2: the gradient norm of the 'model' update is nan" if max_grad_norm else
               r"after step 2 the training state holds NaN or inf in modules/backbone/\S+ \(\d+ of .*"
               r"checkpoint step-000003 is not written")
    with pytest.raises(FloatingPointError, match=message):
        trainer.run()
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-000001", "step-000002"]
    assert not (tmp_path / "run" / "model").exists()
    if max_grad_norm:  # stopped before the update: the weights are still the last checkpoint's
        saved = safetensors.torch.load_file(tmp_path / "run" / "checkpoints" / "step-000002" / "modules.safetensors")
        for key, value in stage.model.backbone.state_dict().items():
            assert torch.equal(value, saved[f"backbone/{key}"]), key


def test_fp16_overflow_is_skipped_not_stopped(tmp_path, data_dir):
    """fp16's loss scaler meets infinite gradients by design (its first scale, 2^16, may be too
    high): it skips the step and the run goes on."""
    config = preset_config("tiny", "stage1", data=str(data_dir), out=str(tmp_path / "fp16"), steps=2, model="tiny",
                           mixed_precision="fp16", checkpoint_every=2)
    stage = make_stage(config, torch.device("cpu"))
    trainer = Trainer(config, stage, LatentClips(config.data, config.num_latent_frames))
    trainer.scalers["model"] = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # overflows for sure
    history = trainer.run()
    assert [r["step"] for r in history] == [0, 1]
    assert not torch.isfinite(torch.tensor(history[0]["grad_norm/model"]))
    assert trainer.scalers["model"].get_scale() < 2.0 ** 127  # the scaler saw the overflow and backed off


def test_resumed_run_logs_each_step_once(tmp_path, data_dir):
    config = preset_config("tiny", "stage0", data=str(data_dir), out=str(tmp_path / "run"), steps=3,
                           checkpoint_every=2, keep_checkpoints=4)
    first = train(config, "cpu")
    # killed after step 2 was logged, before its checkpoint was written, halfway through a line
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.rmtree(checkpoints / "step-000003")
    (checkpoints / "latest").write_text("step-000002\n")
    log = tmp_path / "run" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "loss/fl')
    resumed = train(replace(config, steps=4), "cpu")
    assert [r["step"] for r in resumed] == [2, 3]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 1, 2, 3]
    assert [r["loss/flow"] for r in logged[:3]] == [r["loss/flow"] for r in first]
    assert not log.with_name("metrics.jsonl.tmp").exists()


@pytest.mark.parametrize("folder", [SHIPPED_MODELS["minwm-default"], ROOT / "training_state/default/stage0/model"],
                         ids=["minwm-default", "training-state-stage0"])
def test_committed_models_carry_manifests_that_hold(folder):
    weight_files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".pt"))
    assert weight_files
    for path in weight_files:
        assert check_files(path.parent, [path.name]), f"{path.parent} has no {MANIFEST_FILE}"
