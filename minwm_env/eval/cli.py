"""minwm-eval: score a world model against the ground-truth world; write JSON, plots and a report.

    minwm-eval --model tiny --against ground-truth --out outputs/eval --quick     # about a minute on a CPU
    minwm-eval --model runs/s3/model --against ground-truth --out outputs/eval --drift-chunks 200
    minwm-eval --model ground-truth --against ground-truth --out outputs/sanity  # the truth scores perfectly
    minwm-eval --model runs/arm/ship --against arm-truth --out outputs/arm       # a robot-arm model (docs/robots.md)

Writes ``metrics.json`` (every curve and a ``summary`` of namespaced scalars), PNG plots
(drift, adherence, consistency, controllability, recovery, and ``frechet.png``: the Fréchet
distance per horizon band when the novel-view suite ran) and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cli import arg, parse
from ..data.render import RenderConfig
from ..profiling import machine_description, now_utc
from ..threads import configure_process
from ..world.scenes import SCENE_NAMES
from .evaluator import SUITES, EvalConfig, Evaluator
from .motion import METHODS
from .report import write_report

GROUND_TRUTH = "ground-truth"
ARM_TRUTH = "arm-truth"  # the robot arm's world (minwm_env/envs/arm.py): minwm_env/eval/arm.py scores it
AGAINST = (GROUND_TRUTH, ARM_TRUTH)
# The first scene layout no training clip shows: `minwm-data render` draws layouts
# 0..num_scene_seeds-1 (0..99 by default; the shipped model's data, docs/default_model.md).
HELD_OUT_LAYOUT = RenderConfig.num_scene_seeds
# --quick: a smoke-sized run of every suite (about a minute for the tiny preset on 2 CPU cores).
QUICK = dict(num_paths=2, chunks=4, drift_chunks=8, idle_chunks=3, recovery_chunks=4, perturb_at=1, novel_chunks=4,
             object_paths=1, fd_paths=24, arm_sequences=2)


@dataclass
class Args:
    """Evaluate a world model against the ground-truth world: JSON, PNG plots and a markdown report."""

    model: str = arg("minwm-default", f"shipped model, preset name or model folder; '{GROUND_TRUTH}' scores the "
                                      "truth against itself")
    against: str = arg(GROUND_TRUTH, f"the reference world: '{GROUND_TRUTH}' (the camera world) or '{ARM_TRUTH}' (the "
                                     "robot arm: PSNR per horizon with its baselines, arm mask IoU, pushed objects; "
                                     "camera-only figures n/a)")
    arm_sequences: int = arg(10, f"--against {ARM_TRUTH}: held-out action sequences (each --chunks steps)")
    out: str = arg("outputs/eval", "output folder")
    num_paths: int = arg(4, "camera paths for adherence, PSNR/SSIM and flicker")
    chunks: int = arg(8, "steps (chunks of frames) per path")
    drift_chunks: int = arg(50, "steps of the long drift rollout (e.g. 200; each step is decoded)")
    drift_paths: int = arg(1, "paths of the drift rollout")
    idle_chunks: int = arg(8, "steps of the zero action (idle stability)")
    recovery_chunks: int = arg(8, "steps of each recovery rollout")
    perturb_at: int = arg(2, "the model's KV cache is perturbed before this step")
    cache_noise: float = arg(1.0, "std of the cache noise, relative to the cache's own std")
    seed: int = arg(0, "seed of the camera paths and the model's noise")
    scene: str = arg("room", "ground-truth scene", choices=list(SCENE_NAMES))
    scene_seed: int = arg(HELD_OUT_LAYOUT, f"layout variant of the scene; the default is held out: minwm-data render "
                                           f"(the shipped model's data) draws layouts 0..{HELD_OUT_LAYOUT - 1}")
    novel_chunks: int = arg(10, "steps of the novel-view paths (10: a 120° turn)")
    fd_paths: int = arg(96, "short novel-view paths for the Fréchet distance's frame sets")
    object_paths: int = arg(2, "approaches of the object-scale suite")
    object_chunks: int = arg(3, "steps of each approach")
    suites: tuple[str, ...] = arg(SUITES, "suites to run")
    hardware: bool = arg(True, "measure the hardware-sensitivity table (latency, frames/s, memory)")
    motion_method: str = arg("klt", "camera-motion estimator", choices=list(METHODS))
    device: str = arg("cpu", "torch device of the evaluated model")
    dtype: str = arg("float32", "dtype of the evaluated model", choices=["float32", "bfloat16", "float16"])
    memory: int = arg(-1, "view memory of the world model: -1 the model's own setting, 0 off, N frames (docs/design.md §6)")
    sampler_steps: int = arg(0, "0: the model's own few-step sampler; N: deterministic N-step Euler without guidance "
                                "(the multi-step autoregressive baseline, e.g. for a stage-1 model)")
    num_threads: int | None = arg(None, "torch threads (default: the package's choice, see minwm_env/threads.py; MINWM_THREADS=N also sets it)")
    quick: bool = arg(False, f"small sizes for every size flag left at its default: {QUICK}")


def apply_quick(args: Args) -> Args:
    """--quick shrinks the sizes the user did not set (those still at their defaults)."""
    if not args.quick:
        return args
    defaults = {f.name: f.default for f in dataclasses.fields(Args)}
    return dataclasses.replace(args, **{k: v for k, v in QUICK.items() if getattr(args, k) == defaults[k]})


def build_envs(args: Args):
    from ..envs.ground_truth import GroundTruthEnv
    from ..envs.world_model import WorldModelEnv
    from .rollout import ground_truth_like

    if args.model == GROUND_TRUTH:
        model = GroundTruthEnv(scene=args.scene, scene_seed=args.scene_seed, obs_mode="chunk")
    else:
        sampler = None
        if args.sampler_steps:
            from ..models import load_model
            from ..samplers import EulerSampler

            loaded = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
            sampler = EulerSampler(num_steps=args.sampler_steps, shift=loaded.settings.shift, guidance_scale=1.0)
        model = WorldModelEnv(model=loaded if sampler else args.model, device=args.device, dtype=args.dtype,
                              obs_mode="chunk", start_scene=args.scene, sampler=sampler, num_threads=args.num_threads,
                              memory=None if args.memory < 0 else args.memory)
    return model, ground_truth_like(model, args.scene, args.scene_seed)


def main(argv=None) -> None:
    args = apply_quick(parse(Args, argv))
    configure_process(args.num_threads)
    if args.against not in AGAINST:
        raise SystemExit(f"minwm-eval: --against must be one of {list(AGAINST)}, got {args.against!r}")
    if args.against == ARM_TRUTH:
        return main_arm(args)
    if args.sampler_steps < 0:
        raise SystemExit(f"minwm-eval: --sampler-steps must be >= 0, got {args.sampler_steps}")
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        raise SystemExit(f"minwm-eval: unknown suite(s) {unknown}; suites: {list(SUITES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"minwm-eval: --device {args.device} but CUDA is not available")
    try:
        config = EvalConfig(num_paths=args.num_paths, chunks=args.chunks, drift_chunks=args.drift_chunks,
                            drift_paths=args.drift_paths, idle_chunks=args.idle_chunks,
                            recovery_chunks=args.recovery_chunks, perturb_at=args.perturb_at,
                            cache_noise=args.cache_noise, motion_method=args.motion_method, seed=args.seed,
                            novel_chunks=args.novel_chunks, fd_paths=args.fd_paths, object_paths=args.object_paths,
                            object_chunks=args.object_chunks)
    except ValueError as err:
        raise SystemExit(f"minwm-eval: {err}") from err
    try:
        model, truth = build_envs(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"minwm-eval: cannot load model {args.model!r}: {err}") from err

    began = time.perf_counter()
    evaluator = Evaluator(model, truth, config)
    results = evaluator.run(tuple(s for s in SUITES if s in args.suites),
                            on_suite=lambda name: print(f"minwm-eval: {name}", file=sys.stderr, flush=True))
    if args.hardware and args.model != GROUND_TRUTH:
        from .hardware import HardwareConfig, default_configs, hardware_table

        print("minwm-eval: hardware", file=sys.stderr, flush=True)
        configs = default_configs(args.quick)
        if args.device != "cpu" or args.dtype != "float32":  # the evaluated setting is always a row
            configs.insert(0, HardwareConfig(args.device, args.dtype, 1))
        results["hardware"] = hardware_table(args.model, configs, quick=args.quick)
        first = next((row for row in results["hardware"] if "error" not in row), None)
        if first is not None:
            results["summary"].update({"hardware/first_chunk_s": first["first_chunk_s"],
                                       "hardware/first_chunk_no_vae_s": first["first_chunk_no_vae_s"],
                                       "hardware/frames_per_s": first["frames_per_s"],
                                       "hardware/peak_memory_gb": first["peak_memory_gb"]})
    results["summary"]["time/total_s"] = time.perf_counter() - began
    world = getattr(model.unwrapped, "_world", None)  # None for the ground truth scored against itself
    memory = None if world is None else world.generator.stream.memory
    results["meta"] = {"model": args.model, "against": args.against, "scene": args.scene,
                       "scene_seed": args.scene_seed, "date": now_utc(),
                       "memory_frames": 0 if memory is None else memory.capacity,
                       "machine": machine_description(torch.device(args.device)), "argv": sys.argv[1:] if argv is None
                       else list(argv), "args": dataclasses.asdict(args)}
    written = write_report(results, Path(args.out), title=f"minwm-eval: {args.model} against the {args.against}")
    model.close()
    truth.close()
    summary = results["summary"]
    for key in ("adherence/rotation_error_deg", "adherence/psnr_db", "drift/psnr_db", "consistency/flicker_ratio"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    print(f"wrote {', '.join(str(p) for p in written.values())}")


def main_arm(args: Args) -> None:
    """``--against arm-truth``: a robot-arm world model against the arm's truth (minwm_env/eval/arm.py)."""
    from ..envs.arm import ArmTruthEnv
    from ..envs.world_model import ARM_START, WorldModelEnv
    from ..world.arm import ARM_ACTION_SPEC_NAME
    from .arm import ArmEvalConfig, evaluate_arm, write_arm_report

    if args.model == GROUND_TRUTH:
        raise SystemExit(f"minwm-eval: --against {ARM_TRUTH} scores a world model of the arm; give --model")
    try:
        config = ArmEvalConfig(num_sequences=args.arm_sequences, horizon=args.chunks, seed=args.seed)
        model = WorldModelEnv(model=args.model, device=args.device, dtype=args.dtype, obs_mode="chunk",
                              start_scene=ARM_START, num_threads=args.num_threads, action_spec=ARM_ACTION_SPEC_NAME)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"minwm-eval: cannot evaluate {args.model!r} against the {ARM_TRUTH}: {err}") from err
    height, width = model.unwrapped._world.height, model.unwrapped._world.width
    truth = ArmTruthEnv(width=width, height=height, chunk_frames=model.unwrapped._world.chunk_frames,
                        obs_mode="chunk")
    began = time.perf_counter()
    results = evaluate_arm(model, truth, config)
    results["summary"]["time/total_s"] = time.perf_counter() - began
    results["meta"] = {"model": args.model, "against": args.against, "date": now_utc(),
                       "machine": machine_description(torch.device(args.device)), "args": dataclasses.asdict(args)}
    written = write_arm_report(results, Path(args.out), title=f"minwm-eval: {args.model} against the {ARM_TRUTH}")
    model.close()
    truth.close()
    for key in ("arm/psnr_db", "arm/true_minus_shuffled_db", "arm/repeat_start_psnr_db", "arm/mask_iou_h4"):
        if key in results["summary"]:
            print(f"{key}: {results['summary'][key]}")
    print(f"wrote {', '.join(str(p) for p in written.values())}")


if __name__ == "__main__":
    main()
