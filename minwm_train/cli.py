"""minwm-train: one command per stage, and the whole pipeline.

    minwm-train stage0 --preset tiny --data data/world --out runs/stage0
    minwm-train stage1 --preset tiny --data data/world --out runs/stage1 --model runs/stage0/model
    minwm-train stage2a --preset tiny --data data/world --out runs/stage2a --model runs/stage1/model --teacher runs/stage1/model
    minwm-train stage3 --preset tiny --data data/world --out runs/stage3 --model runs/stage2a/model --teacher runs/stage0/model
    minwm-train pipeline --preset tiny --data data/world --out runs/pipeline [--distill ode|cd] [--until stage2c]
    minwm-train stage1 --config runs/stage1/config.json --steps 200      # a saved config, overridden

--data is a dataset folder after `minwm-data encode` (its latents/ subfolder is read; the
latents folder itself works too). Settings are layered: the preset's recipe, then --config (a
saved config.json), then the flags typed. A run writing into a folder with checkpoints resumes
from the latest one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import minwm_env  # noqa: F401  (before torch: its thread defaults apply only if torch is not loaded yet)
import torch
from minwm_env.cli import add_dataclass_arguments
from minwm_env.threads import configure_process

from .config import PRESETS, STAGES, TrainConfig, check_supported, preset_config
from .data import LatentClips
from .engine import Trainer


def make_stage(config: TrainConfig, device: torch.device):
    from .stages import STAGE_CLASSES
    return STAGE_CLASSES[config.stage](config, device)


def train(config: TrainConfig, device: str | torch.device | None = None, resume: bool = True) -> list[dict]:
    if device is None:  # under torchrun / accelerate launch each process takes its own GPU
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    check_supported(config)
    if not config.data:
        raise ValueError("--data is required: a folder of pre-encoded latents (minwm-data encode)")
    data = LatentClips(config.data, config.num_latent_frames)
    stage = make_stage(config, device)
    from .stages.common import check_data_actions
    check_data_actions(data, stage)
    return Trainer(config, stage, data).run(resume=resume)


def stage_finished(folder: Path, steps: int) -> bool:
    """Whether a stage's run folder holds its exported model after all ``steps`` (its last
    metrics record): a pipeline resumed from a kept record (training_state/) need not keep the
    finished stage's checkpoints to go on past it."""
    metrics = folder / "metrics.jsonl"
    if not (folder / "model" / "minwm.json").is_file() or not metrics.is_file():
        return False
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    try:
        return bool(lines) and int(json.loads(lines[-1])["step"]) + 1 >= steps
    except (ValueError, KeyError):
        return False


def pipeline(base: dict, preset: str, out: Path, distill: str = "ode", device=None, until: str | None = None) -> Path:
    """Stages 0 → 1 → 2a (or 2b) [→ 2c where the preset has it] → 3, each starting from the
    previous one's model, stopping after ``until`` if given; returns the last model trained."""
    stage2 = {"ode": "stage2a", "cd": "stage2b"}[distill]
    model = base.get("model")
    outputs = {}
    rollout = ["stage2c"] if "stage2c" in PRESETS.get(preset, {}) else []  # self-rollout, where the preset has it
    stages = ("stage0", "stage1", stage2, *rollout, "stage3")
    if until is not None and until not in stages:
        raise ValueError(f"--until {until}: this pipeline runs {list(stages)}")
    for stage in stages:
        overrides = {k: v for k, v in base.items() if k not in ("stage", "out", "model", "teacher")}
        if model is not None:
            overrides["model"] = model
        if stage in ("stage2a", "stage2b"):
            overrides["teacher"] = str(outputs["stage1"])
        if stage == "stage3":
            overrides["teacher"] = str(outputs["stage0"])
        config = preset_config(preset, stage, **overrides, out=str(out / stage))
        if stage_finished(out / stage, config.steps):
            print(f"pipeline: {stage} is finished ({out / stage / 'model'}), going on", file=sys.stderr)
        else:
            train(config, device)
        outputs[stage] = out / stage / "model"
        model = str(outputs[stage])
        if stage == until:
            break
    return outputs[stage]


def main(argv=None) -> None:
    summary, _, details = __doc__.partition("\n\n")
    description = summary.removeprefix("minwm-train: ")
    parser = argparse.ArgumentParser(prog="minwm-train", description=description[0].upper() + description[1:],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="examples:\n" + details)
    parser.add_argument("command", choices=list(STAGES) + ["pipeline"], help="stage to train, or the whole pipeline")
    parser.add_argument("--config", help="a config.json to start from (the preset's recipe otherwise)")
    parser.add_argument("--distill", choices=["ode", "cd"], default="ode", help="pipeline: stage 2a (ode) or 2b (cd)")
    parser.add_argument("--until", default=None, help="pipeline: stop after this stage (e.g. stage2c)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (default: the package's choice, see minwm_env/threads.py; MINWM_THREADS=N also sets it)")
    add_dataclass_arguments(parser, TrainConfig, suppress_defaults=True, skip=("stage",))
    args = vars(parser.parse_args(argv))
    command, config_path, distill, device, until, num_threads = (
        args.pop(k) for k in ("command", "config", "distill", "device", "until", "num_threads"))
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        configure_process(num_threads)
        if command == "pipeline":
            preset = given.pop("preset", "tiny")
            final = pipeline(given, preset, Path(given.pop("out", "runs/pipeline")), distill, device, until)
            print(f"pipeline done: the final model is {final} (load it with gym.make('minwm/World-v0', model=...))")
            return
        if config_path is not None:
            config = replace(TrainConfig.load(config_path), stage=command)
            config = replace(config, **given)
        else:
            config = preset_config(given.pop("preset", "tiny"), command, **given)
        train(config, device)
        print(f"{command} done: model written to {Path(config.out) / 'model'}")
    except (ValueError, FileNotFoundError) as err:
        print(f"minwm-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
