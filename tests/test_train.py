"""minwm_train on the tiny preset: every stage learns, layouts are causal, runs resume exactly."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import safetensors.torch
import torch

import minwm_env  # noqa: F401
from minwm_env.data.latents import EncodeConfig, encode_dataset
from minwm_env.data.render import RenderConfig, render_dataset
from minwm_env.models import load_model
from minwm_train.cli import make_stage, train
from minwm_train.config import TrainConfig, preset_config
from minwm_train.data import LatentClips
from minwm_train.engine import Trainer, step_generator
from minwm_train.stages.stage2a_ode import generate_ode_pairs
from minwm_env.backbones import causal_frame_mask
from minwm_env.conditioning import FrameConditions

from conftest import randomize_

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    render_dataset(root, RenderConfig(num_clips=6, num_frames=17, height=64, width=64,
                                      path_kinds=("walk", "turn", "mixed"), seed=0), progress=False)
    encode_dataset(root, load_model("tiny").codec, EncodeConfig(), progress=False)
    return root / "latents"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """Stage 0 and stage 1 outputs, trained once for the later stages' tests."""
    out = tmp_path_factory.mktemp("runs")
    train(preset_config("tiny", "stage0", data=str(data_dir), out=str(out / "stage0")), "cpu")
    train(preset_config("tiny", "stage1", data=str(data_dir), out=str(out / "stage1"),
                        model=str(out / "stage0" / "model")), "cpu")
    return out


def eval_loss(stage, data, optimizer, seed=123):
    generator = step_generator(seed, 0)
    batch = data.sample(4, generator)
    with torch.no_grad():
        return float(stage.loss(optimizer, batch, 0, generator)[0])


@pytest.mark.parametrize("stage_name", ["stage0", "stage1", "stage2a", "stage2b", "stage2c"])
def test_every_stage_lowers_its_loss(tmp_path, data_dir, trained, stage_name):
    model = {"stage0": "tiny", "stage1": str(trained / "stage0" / "model")}.get(stage_name,
                                                                               str(trained / "stage1" / "model"))
    config = preset_config("tiny", stage_name, data=str(data_dir), out=str(tmp_path / stage_name), model=model,
                           teacher=str(trained / "stage1" / "model"), steps=25, checkpoint_every=25)
    data = LatentClips(config.data, config.num_latent_frames)
    stage = make_stage(config, torch.device("cpu"))
    trainer = Trainer(config, stage, data)
    stage.prepare(data)
    before = eval_loss(stage, data, "model")
    trainer.run()
    after = eval_loss(stage, data, "model")
    assert after < 0.9 * before, (before, after)
    # Every stage's output loads straight into the env.
    env = gym.make("minwm/World-v0", model=str(tmp_path / stage_name / "model"))
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0, 0, 0.08, 0, 0, 0], np.float32))
    assert obs.shape == (64, 64, 3)


def test_stage1_noisy_chunk_sees_nothing_later(data_dir):
    config = preset_config("tiny", "stage1", data=str(data_dir), out="unused")
    stage = make_stage(config, torch.device("cpu"))
    data = LatentClips(config.data, config.num_latent_frames)
    batch = data.sample(2, step_generator(0, 0))
    (x, timestep, positions, mask, conds, split, _), _ = stage.layout(batch, step_generator(0, 1))
    x = x.clone().requires_grad_(True)
    out = stage.model.backbone(x, timestep, positions, stage.model.backbone.encode_prompt(torch.zeros(2, 1, 32)),
                               frame_mask=mask, conditions=conds)
    chunk = config.chunk_frames
    out[:, :, split:split + chunk].sum().backward()  # the first noisy chunk (latent frames 1..chunk)
    grad = x.grad.abs().sum(dim=(0, 1, 3, 4))
    assert grad[0] > 0  # the clean start frame is context
    assert torch.all(grad[1:split] == 0)  # no clean chunk of its own or later
    assert torch.all(grad[split:split + chunk] > 0) and torch.all(grad[split + chunk:] == 0)


def test_stage1_input_leaves_out_only_clean_frames_nobody_reads(data_dir):
    """The layout keeps clean frames 0..F-chunk-1; adding the clean last chunk back (as the
    layout once did) changes no output of the noisy half."""
    config = preset_config("tiny", "stage1", data=str(data_dir), out="unused")
    stage = make_stage(config, torch.device("cpu"))
    backbone, chunk = stage.model.backbone, config.chunk_frames
    randomize_(backbone, seed=5, scale=0.3)
    batch = LatentClips(config.data, config.num_latent_frames).sample(2, step_generator(0, 0))
    (x, timestep, positions, mask, conds, split, _), _ = stage.layout(batch, step_generator(0, 1))
    num_frames = batch["latents"].shape[2]
    assert split == num_frames - chunk and x.shape[2] == split + num_frames - 1
    prompt = backbone.encode_prompt(torch.zeros(2, 1, 32))
    with torch.no_grad():
        out = backbone(x, timestep, positions, prompt, frame_mask=mask, conditions=conds)
        # the untrimmed input: every clean frame, then the same noisy half
        clean = batch["latents"]
        full_x = torch.cat([clean, x[:, :, split:]], dim=2)
        full_t = torch.cat([torch.zeros(2, num_frames), timestep[:, split:]], dim=1)
        full_positions = torch.cat([torch.arange(num_frames), positions[split:]])
        blocks = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(num_frames - 1) // chunk + 1])
        noisy = torch.cat([torch.zeros(num_frames, dtype=torch.bool), torch.ones(num_frames - 1, dtype=torch.bool)])
        full_mask = causal_frame_mask(full_positions, torch.cat([blocks, blocks[1:]]), noisy=noisy)
        full_conds = FrameConditions.cat([conds.frames(slice(0, split)),
                                          FrameConditions(batch["w2c"][:, split:num_frames],
                                                          batch["intrinsics"][:, split:num_frames],
                                                          batch["actions"][:, split:num_frames]),
                                          conds.frames(slice(split, None))])
        full = backbone(full_x, full_t, full_positions, prompt, frame_mask=full_mask, conditions=full_conds)
    torch.testing.assert_close(out[:, :, split:], full[:, :, num_frames:], atol=1e-5, rtol=0)


def test_stage2c_continues_from_its_own_frame(data_dir, trained):
    config = preset_config("tiny", "stage2c", data=str(data_dir), model=str(trained / "stage1" / "model"))
    data = LatentClips(config.data, config.num_latent_frames)
    stage = make_stage(config, torch.device("cpu"))
    batch = data.sample(2, step_generator(0, 0))
    chunk = config.chunk_frames
    generated = stage.rollout_context(batch, step_generator(0, 1), 1)
    # the model's own last frame of the first streamed chunk: close to the truth's, not equal to it
    truth = batch["latents"][:, :, chunk:chunk + 1]
    assert generated.shape == truth.shape and not torch.allclose(generated, truth, atol=1e-3)
    # the same seed streams the same frame (it is the env's generator, not a fresh draw)
    assert torch.equal(generated, stage.rollout_context(batch, step_generator(0, 1), 1))
    window = stage.window(batch, generated, 1)
    assert torch.equal(window["latents"][:, :, :1], generated)
    assert torch.equal(window["latents"][:, :, 1:], batch["latents"][:, :, chunk + 1:2 * chunk + 1])
    torch.testing.assert_close(window["w2c"][:, 0], torch.eye(4).expand(2, 4, 4), atol=1e-6, rtol=0)
    assert (window["actions"][:, 0] == 0).all()
    assert torch.equal(window["actions"][:, 1:], batch["actions"][:, chunk + 1:2 * chunk + 1])
    with pytest.raises(ValueError, match="latent frames"):
        stage.loss("model", {**batch, "latents": batch["latents"][:, :, :chunk + 1]}, 0, step_generator(0, 2))


def test_ode_pairs_are_reproduced_by_rerunning_the_teacher(data_dir, trained):
    teacher = load_model(str(trained / "stage1" / "model"))
    data = LatentClips(data_dir, 5)
    clips = data.batch(torch.arange(3))
    kwargs = dict(chunk_frames=2, teacher_steps=8, guidance=6.0, student_timesteps=(1000.0, 500.0), shift=5.0, seed=7)
    first, again = generate_ode_pairs(teacher, clips, **kwargs), generate_ode_pairs(teacher, clips, **kwargs)
    assert first["states"].shape == (3, 2, 4, 4, 8, 8) and first["x0"].shape == (3, 4, 5, 8, 8)
    for key in first:
        assert torch.equal(first[key], again[key]), key
    # The state at student step 0 is the teacher's pure noise; the endpoint differs from it.
    assert (first["states"][:, 0] - first["x0"][:, :, 1:]).abs().mean() > 0.1
    assert not torch.equal(generate_ode_pairs(teacher, clips, **{**kwargs, "seed": 8})["x0"], first["x0"])


def test_dmd_gradient_flows_only_through_the_exit_step(tmp_path, data_dir, trained):
    config = preset_config("tiny", "stage3", data=str(data_dir), out=str(tmp_path / "s3"),
                           model=str(trained / "stage1" / "model"), teacher=str(trained / "stage0" / "model"),
                           student_timesteps=(1000.0, 750.0, 500.0, 250.0))
    stage = make_stage(config, torch.device("cpu"))
    # The fake score starts as a copy of the real one, so the DMD gradient starts at zero (up to
    # rounding: this test once passed on batch-size-dependent rounding alone). Move it, as its
    # critic updates would, so there is a gradient to flow.
    with torch.no_grad():
        for param in stage.fake.backbone.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    data = LatentClips(config.data, config.num_latent_frames)
    grad_modes = []
    hook = stage.generator_model.backbone.transformer.proj_out.register_forward_hook(
        lambda module, inputs, output: grad_modes.append(output.requires_grad))
    generator = step_generator(0, 5)
    loss, logs = stage.loss("generator", data.sample(2, generator), 0, generator)
    hook.remove()
    stats = stage.rollout_stats
    num_chunks = config.dmd_rollout_chunks
    # one differentiable forward per chunk (its exit step); the start frame, earlier steps and
    # cache writes all ran without gradient (the last chunk's write is deferred, and never needed)
    assert stats["grad_forwards"] == num_chunks and sum(grad_modes) == num_chunks
    assert len(grad_modes) == 1 + stats["forwards"] + num_chunks - 1
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.generator_model.backbone.parameters())
    assert all(p.grad is None for p in stage.real.backbone.parameters())
    assert stage.updates(0) == ["critic"] and stage.updates(config.dmd_critic_updates - 1) == ["critic", "generator"]


def test_dmd_critic_learns_and_generator_moves(tmp_path, data_dir, trained):
    config = preset_config("tiny", "stage3", data=str(data_dir), out=str(tmp_path / "s3"), steps=12,
                           model=str(trained / "stage1" / "model"), teacher=str(trained / "stage0" / "model"))
    data = LatentClips(config.data, config.num_latent_frames)
    stage = make_stage(config, torch.device("cpu"))
    start = {k: v.clone() for k, v in stage.generator_model.backbone.state_dict().items()}
    before = eval_loss(stage, data, "critic")
    Trainer(config, stage, data).run()
    assert eval_loss(stage, data, "critic") < before
    moved = sum((v - start[k]).abs().sum() for k, v in stage.generator_model.backbone.state_dict().items())
    assert moved > 0
    gym.make("minwm/World-v0", model=str(tmp_path / "s3" / "model")).reset(seed=0)


def test_killed_run_resumes_with_identical_losses(tmp_path, data_dir):
    base = preset_config("tiny", "stage1", data=str(data_dir), steps=6, checkpoint_every=3, model="tiny")
    full = train(replace(base, out=str(tmp_path / "full")), "cpu")
    train(replace(base, out=str(tmp_path / "killed"), steps=3), "cpu")  # stopped after its step-3 checkpoint
    # a later checkpoint attempt died half-written: it must be ignored
    (tmp_path / "killed" / "checkpoints" / ".step-000004.tmp").mkdir()
    resumed = train(replace(base, out=str(tmp_path / "killed")), "cpu")
    assert [r["step"] for r in resumed] == [3, 4, 5]
    assert [r["loss/flow"] for r in resumed] == [r["loss/flow"] for r in full[3:]]


def test_ema_and_gradient_accumulation_run(tmp_path, data_dir):
    config = preset_config("tiny", "stage0", data=str(data_dir), out=str(tmp_path / "ema"), steps=3,
                           ema_decay=0.9, grad_accum=2, gradient_checkpointing=True)
    history = train(config, "cpu")
    assert len(history) == 3
    checkpoint = tmp_path / "ema" / "checkpoints" / "step-000003"
    assert (checkpoint / "ema.safetensors").is_file() and (checkpoint / "optimizer-model.pt").is_file()


def test_ema_starts_from_the_weights_at_ema_start(tmp_path, data_dir):
    """EMA = the weights after step ema_start, then averaged: never the initial weights."""
    weights = []
    for steps in (2, 3):
        config = preset_config("tiny", "stage0", data=str(data_dir), out=str(tmp_path / f"run{steps}"), steps=steps,
                               checkpoint_every=steps)
        train(config, "cpu")
        state = safetensors.torch.load_file(tmp_path / f"run{steps}" / "checkpoints" / f"step-{steps:06d}" /
                                            "modules.safetensors")
        weights.append(state)
    config = preset_config("tiny", "stage0", data=str(data_dir), out=str(tmp_path / "ema"), steps=3,
                           checkpoint_every=3, ema_decay=0.9, ema_start=1)
    train(config, "cpu")
    ema = safetensors.torch.load_file(tmp_path / "ema" / "checkpoints" / "step-000003" / "ema.safetensors")
    for key, value in ema.items():
        expected = 0.9 * weights[0][f"backbone/{key}"] + 0.1 * weights[1][f"backbone/{key}"]
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)


def test_corrupted_or_missing_checkpoint_raises(tmp_path, data_dir):
    config = preset_config("tiny", "stage0", data=str(data_dir), out=str(tmp_path / "run"), steps=2,
                           checkpoint_every=2)
    train(config, "cpu")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    weights = checkpoint / "modules.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="modules.safetensors"):
        train(replace(config, steps=4), "cpu")
    shutil.rmtree(checkpoint)
    with pytest.raises(FileNotFoundError, match="step-000002"):
        train(replace(config, steps=4), "cpu")
    stage = make_stage(config, torch.device("cpu"))
    trainer = Trainer(config, stage, LatentClips(config.data, config.num_latent_frames))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        trainer.load_checkpoint(tmp_path / "nowhere")


def test_config_round_trip_and_errors(tmp_path):
    config = preset_config("wan21-1.3b", "stage3")
    assert config.lr == 2e-6 and config.betas == (0.0, 0.999) and config.steps == 200 and config.ema_decay == 0.99
    assert preset_config("hy15-8b", "stage0").lr == 1e-5
    config.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == config
    (tmp_path / "bad.json").write_text(json.dumps({"stage": "stage0", "lr_rate": 1}))
    with pytest.raises(ValueError, match="lr_rate"):
        TrainConfig.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"steps": "many"}))
    with pytest.raises(ValueError, match="steps must be int"):
        TrainConfig.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="stage must be"):
        TrainConfig(stage="stage9")


def test_command_line_trains_a_stage(tmp_path, data_dir):
    out = tmp_path / "cli"
    # --data the dataset folder, as the README and --help write it (data_dir is its latents/)
    proc = subprocess.run([sys.executable, "-m", "minwm_train.cli", "stage0", "--preset", "tiny", "--data",
                           str(data_dir.parent), "--out", str(out), "--steps", "2", "--lr", "0.0005"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == 2 and saved["lr"] == 0.0005 and saved["camera"] == "prope"
    assert (out / "model" / "transformer" / "config.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "minwm_train.cli", "stage0", "--data", str(tmp_path / "none"),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "index.json" in bad.stderr


def test_command_line_help_and_the_hy15_preset(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "minwm_train.cli", "--help"], capture_output=True, text=True,
                               timeout=600).stdout
    assert help_text.lower().count("one command per stage, and the whole pipeline") == 1
    assert "``" not in help_text and "--data data/world " in help_text and "data/world/latents" not in help_text
    hy15 = subprocess.run([sys.executable, "-m", "minwm_train.cli", "stage0", "--preset", "hy15-8b", "--data",
                           str(tmp_path / "none"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600)
    # the full-size HunyuanVideo-1.5 preset is trainable now: a missing dataset is what stops it, before any weights
    assert hy15.returncode == 2 and str(tmp_path / "none") in hy15.stderr, hy15.stderr[-2000:]
    assert "not supported" not in hy15.stderr and "Traceback" not in hy15.stderr


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# FSDP is checked on stage 3 (three models, two optimisers: every path stage 1 takes and more);
# plain gradient averaging on both.
@pytest.mark.parametrize("stage_name,fsdp", [("stage1", False), ("stage3", False), ("stage3", True)])
def test_two_processes_equal_one_with_accumulation(tmp_path, data_dir, trained, stage_name, fsdp):
    """Data parallel over 2 CPU processes (gloo) == 1 process accumulating 2 micro-batches; with
    --fsdp too, where the run is also stopped after step 2 and resumed from its sharded state."""
    sources = {"stage1": ["--model", "tiny"],
               "stage3": ["--model", str(trained / "stage1" / "model"), "--teacher", str(trained / "stage0" / "model"),
                          "--dmd-critic-updates", "2"]}[stage_name]
    common = ["--preset", "tiny", "--data", str(data_dir), "--steps", "3", "--checkpoint-every", "3",
              "--batch-size", "1", "--log-every", "1", *sources]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    # the single process runs beside the distributed one (separate outputs; nothing here is timed)
    one = subprocess.Popen([sys.executable, "-m", "minwm_train.cli", stage_name, *common, "--grad-accum", "2",
                            "--out", str(tmp_path / "one")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)
    def launch(*extra):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(_free_port()), "-m", "minwm_train.cli", stage_name, *common,
                               "--out", str(tmp_path / "two"), *(["--fsdp"] if fsdp else []), *extra],
                              capture_output=True, text=True, timeout=600, env=env)

    if fsdp:  # stop after a step-2 checkpoint; the run below resumes from it
        first = launch("--steps", "2", "--checkpoint-every", "2")
        assert first.returncode == 0, first.stderr[-3000:]
    two = launch()
    one_stderr = one.communicate(timeout=600)[1]
    assert one.returncode == 0, one_stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    import safetensors.torch
    state_one = safetensors.torch.load_file(tmp_path / "one" / "checkpoints" / "step-000003" / "modules.safetensors")
    state_two = safetensors.torch.load_file(tmp_path / "two" / "checkpoints" / "step-000003" / "modules.safetensors")
    assert state_one.keys() == state_two.keys()
    # FSDP reduce-scatters in another summation order. Adam divides by sqrt(v), so weights whose
    # gradients are ~0 — cross-attention to the null prompt (attn2, its pre-norm norm2; the key
    # bias exactly 0 in exact arithmetic) — move by rounding noise, up to ~1e-4 in 3 steps at lr
    # 1e-3 (measured); every other weight agrees to 1e-5, and losses and gradient norms tighter.
    def atol(key):
        if not fsdp:
            return 1e-6
        return 3e-4 if ".attn2." in key or ".norm2." in key else 1e-5
    for key, value in state_one.items():
        torch.testing.assert_close(state_two[key], value, rtol=1e-5, atol=atol(key), msg=key)
    # the exported models (an unsharded copy under FSDP) hold the same weights
    exported = [safetensors.torch.load_file(tmp_path / run / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
                for run in ("one", "two")]
    assert exported[0].keys() == exported[1].keys()
    for key, value in exported[0].items():
        torch.testing.assert_close(exported[1][key], value, rtol=1e-5, atol=atol(key), msg=key)
    losses = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    assert [r["step"] for r in losses[0]] == [r["step"] for r in losses[1]] == [0, 1, 2]
    for a, b in zip(*losses):
        for key in a:
            if key.startswith(("loss/", "grad_norm/")):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (key, a["step"])
    # and the processes did train: non-zero gradients, averaged to the same norm as the single run
    assert all(value > 0 for r in losses[1] for key, value in r.items() if key.startswith("grad_norm/"))


def test_bf16_mixed_precision_computes_in_bf16_and_keeps_fp32_weights(tmp_path, data_dir):
    config = preset_config("tiny", "stage1", data=str(data_dir), out=str(tmp_path / "bf16"), steps=2, model="tiny",
                           mixed_precision="bf16", checkpoint_every=2)
    data = LatentClips(config.data, config.num_latent_frames)
    stage = make_stage(config, torch.device("cpu"))
    seen = []
    layer = stage.model.backbone.transformer.blocks[0].ffn.net[2]
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    history = Trainer(config, stage, data).run()
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the matmuls ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in stage.model.backbone.parameters())  # master weights stay fp32
    assert all(np.isfinite(r["loss/flow"]) and r["grad_norm/model"] > 0 for r in history)
    # the same run without mixed precision computes in fp32
    plain = make_stage(replace(config, mixed_precision="no", out=str(tmp_path / "fp32")), torch.device("cpu"))
    seen.clear()
    handle = plain.model.backbone.transformer.blocks[0].ffn.net[2].register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype))
    Trainer(replace(config, mixed_precision="no", out=str(tmp_path / "fp32")), plain, data).run()
    handle.remove()
    assert set(seen) == {torch.float32}


def test_fp16_mixed_precision_scales_the_loss_and_checkpoints_the_scaler(tmp_path, data_dir):
    config = preset_config("tiny", "stage1", data=str(data_dir), out=str(tmp_path / "fp16"), steps=2, model="tiny",
                           mixed_precision="fp16", checkpoint_every=2)
    stage = make_stage(config, torch.device("cpu"))
    seen = []
    stage.model.backbone.transformer.blocks[0].ffn.net[2].register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype))
    trainer = Trainer(config, stage, LatentClips(config.data, config.num_latent_frames))
    history = trainer.run()
    assert set(seen) == {torch.float16}
    assert trainer.scalers["model"].get_scale() > 1  # the loss was scaled before backward
    assert all(np.isfinite(r["loss/flow"]) for r in history)
    assert (tmp_path / "fp16" / "checkpoints" / "step-000002" / "scaler-model.pt").is_file()


def test_pipeline_runs_the_stages_in_order_and_stops_after_until(tmp_path, data_dir):
    from minwm_train.cli import main
    out = tmp_path / "pipeline"
    with pytest.raises(SystemExit):  # a stage the pipeline does not run: refused before any training
        main(["pipeline", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--until", "stage9"])
    assert not out.exists()
    main(["pipeline", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--until", "stage1",
          "--steps", "2"])
    assert (out / "stage0" / "model" / "minwm.json").is_file() and (out / "stage1" / "model" / "minwm.json").is_file()
    assert json.loads((out / "stage1" / "config.json").read_text())["model"] == str(out / "stage0" / "model")
    assert not (out / "stage2a").exists()
    # a finished stage kept without its checkpoints (training_state/ keeps model and record only)
    # is not trained again: the pipeline goes on from its model
    shutil.rmtree(out / "stage0" / "checkpoints")
    weights = out / "stage0" / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    before = (weights.stat().st_mtime_ns, (out / "stage0" / "metrics.jsonl").read_text())
    main(["pipeline", "--preset", "tiny", "--data", str(data_dir), "--out", str(out), "--until", "stage2a",
          "--steps", "2"])
    assert (weights.stat().st_mtime_ns, (out / "stage0" / "metrics.jsonl").read_text()) == before
    assert not (out / "stage0" / "checkpoints").exists() and (out / "stage2a" / "model" / "minwm.json").is_file()
