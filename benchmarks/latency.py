"""First-chunk latency of bidirectional vs autoregressive sampling, steady streaming cost, FLOPs.

    python benchmarks/latency.py --preset tiny                                   # 2-core CPU, < 3 min
    python benchmarks/latency.py --preset wan21-1.3b --device cuda --dtype bfloat16 --json out.json

Measures, on one model and device (VAE excluded / included):
  (a) bidirectional Euler (50 steps, CFG) over a whole 77-frame clip: nothing shows before it ends;
  (b) autoregressive multi-step (50 steps, CFG), first chunk;
  (c) autoregressive few-step (4 steps), first chunk;
then streams few-step chunks with decoding and compares chunk 5 with chunk 200 (the 9 chunks around
each, timed alternately on two streams so machine noise hits both; the ratio is the median of
back-to-back ratios), decoded
frames/s and peak memory. FLOPs of
(a) and (c) for the full-size Wan2.1-1.3B architecture at 480×832 are counted on meta
tensors, which needs no GPU.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from minwm_env import profiling
from minwm_env.cli import arg, parse
from minwm_env.models import PRESETS, load_model
from minwm_env.samplers import EulerSampler, FewStepSampler

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Args:
    """Latency benchmark of the streaming generator."""

    preset: str = arg("tiny", "model preset (or a model folder)")
    device: str = arg("cpu", "torch device")
    dtype: str = arg("float32", "compute dtype", choices=sorted(DTYPES))
    clip_frames: int = arg(77, "RGB frames of the bidirectional clip (1 + 4k)")
    bidir_steps: int = arg(50, "Euler steps of the bidirectional baseline and the AR multi-step run")
    guidance: float = arg(5.0, "classifier-free guidance of the multi-step runs")
    early_chunk: int = arg(5, "early chunk whose streaming latency is compared")
    late_chunk: int = arg(200, "late chunk whose streaming latency is compared with the early one")
    flops: bool = arg(True, "count the full-size FLOP ratio on meta tensors")
    flops_preset: str = arg("wan21-1.3b", "preset whose architecture the FLOPs are counted for")
    json: str | None = arg(None, "write the figures to this JSON file")
    seed: int = arg(0, "noise seed")
    compile: str | None = arg(None, "stream on the static-shape cache with a compiled forward: a torch.compile mode "
                                    "(reduce-overhead: CUDA graphs) or backend (aot_eager); the bidirectional "
                                    "baseline stays eager")


def run(args: Args) -> dict:
    device = torch.device(args.device)
    model = load_model(args.preset, device=device, dtype=DTYPES[args.dtype])
    settings = model.settings
    if (args.clip_frames - 1) % 4:
        raise SystemExit(f"--clip-frames must be 1 + 4k, got {args.clip_frames}")
    num_latent = 1 + (args.clip_frames - 1) // 4
    multistep = EulerSampler(num_steps=args.bidir_steps, shift=settings.shift, guidance_scale=args.guidance)
    fewstep = FewStepSampler(timesteps=settings.sampler_timesteps, shift=settings.shift)

    compiled = {"compile": args.compile}
    for sampler in (fewstep, multistep) if args.compile else (fewstep,):  # warm-up (allocations, kernels, graphs)
        profiling.first_chunk_autoregressive(model, sampler, seed=args.seed, **compiled)
    profiling.reset_peak_memory(device)
    bidir = profiling.first_chunk_bidirectional(model, multistep, num_latent, settings.chunk_frames, args.seed)
    ar_multi = profiling.first_chunk_autoregressive(model, multistep, seed=args.seed, **compiled)
    ar_few = profiling.first_chunk_autoregressive(model, fewstep, seed=args.seed, **compiled)
    total = args.early_chunk + args.late_chunk + 2
    with tqdm(total=total, desc="streaming", file=sys.stderr, leave=False, disable=None) as bar:
        streaming = profiling.measure_streaming(model, early_chunk=args.early_chunk, late_chunk=args.late_chunk,
                                                seed=args.seed, progress=bar, **compiled)
    peak_gb, peak_kind = profiling.peak_memory_gb(device)

    result = {
        "preset": args.preset, "device": str(device), "dtype": args.dtype, "compile": args.compile,
        "machine": profiling.machine_description(device), "date": profiling.now_utc(),
        "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]),
        "height": settings.height, "width": settings.width, "clip_frames": args.clip_frames,
        "chunk_frames": settings.chunk_frames, "window_frames": settings.window_frames,
        "first_chunk_s": {"bidir_multistep_cfg": asdict(bidir), "ar_multistep_cfg": asdict(ar_multi),
                          "ar_fewstep": asdict(ar_few)},
        "speedup_bidir_over_ar_fewstep": bidir.no_vae_s / ar_few.no_vae_s,
        "speedup_bidir_over_ar_multistep": bidir.no_vae_s / ar_multi.no_vae_s,
        "early_chunk": args.early_chunk, "late_chunk": args.late_chunk,
        "chunk_early_s": streaming.early_median_s, "chunk_late_s": streaming.late_median_s,
        "chunk_early_no_vae_s": statistics.median(streaming.early_no_vae_s),
        "chunk_late_no_vae_s": statistics.median(streaming.late_no_vae_s),
        "chunk200_over_chunk5": streaming.late_over_early,
        "chunk200_over_chunk5_no_vae": streaming.late_over_early_no_vae,
        "frames_per_s": streaming.frames_per_s,
        # per steady chunk (chunks around both timed points): the transformer (denoise + cache
        # write) against the VAE's streaming decode (the chunk's time minus the transformer's)
        "split_per_chunk_s": {
            "transformer_s": statistics.median(streaming.early_no_vae_s + streaming.late_no_vae_s),
            "vae_decode_s": statistics.median([total - nv for total, nv in zip(
                streaming.early_s + streaming.late_s, streaming.early_no_vae_s + streaming.late_no_vae_s)]),
        },
        "first_frame_s": ar_few.with_vae_s,
        "peak_memory_gb": peak_gb, "peak_memory_kind": peak_kind,
    }
    if args.flops:
        flops = profiling.count_flops(args.flops_preset, num_latent_frames=num_latent,
                                      chunk_frames=settings.chunk_frames, bidir_steps=args.bidir_steps,
                                      ar_steps=args.bidir_steps, fewstep_steps=len(settings.sampler_timesteps))
        spec = PRESETS[args.flops_preset].settings
        result["flops_full_size"] = {"preset": args.flops_preset, "height": spec.height, "width": spec.width,
                                     **{k: v for k, v in flops.items() if k != "ratio_bidir_over_ar_fewstep"}}
        result["flops_ratio_full_size"] = flops["ratio_bidir_over_ar_fewstep"]
    return result


def table(result: dict) -> str:
    first = result["first_chunk_s"]
    rows = [("first chunk, bidirectional 50-step CFG (a)", first["bidir_multistep_cfg"]),
            ("first chunk, AR multi-step CFG (b)", first["ar_multistep_cfg"]),
            ("first chunk, AR 4-step (c)", first["ar_fewstep"])]
    lines = [f"minwm latency — {result['preset']} {result['height']}x{result['width']}, {result['machine']}, "
             f"{result['dtype']}, {result['date']}",
             f"{'':46s} {'no VAE':>10s} {'with VAE':>10s}"]
    lines += [f"{name:46s} {r['no_vae_s']:10.4f} {r['with_vae_s']:10.4f}" for name, r in rows]
    lines += [
        f"{'speed-up (a)/(c), no VAE':46s} {result['speedup_bidir_over_ar_fewstep']:10.1f}x",
        f"{'steady chunk %d' % result['early_chunk']:46s} {result['chunk_early_no_vae_s']:10.4f} "
        f"{result['chunk_early_s']:10.4f}",
        f"{'steady chunk %d' % result['late_chunk']:46s} {result['chunk_late_no_vae_s']:10.4f} "
        f"{result['chunk_late_s']:10.4f}",
        f"{'chunk%d / chunk%d' % (result['late_chunk'], result['early_chunk']):46s} "
        f"{result['chunk200_over_chunk5_no_vae']:10.3f} {result['chunk200_over_chunk5']:10.3f}",
        f"{'decoded frames/s (steady)':46s} {result['frames_per_s']:10.1f}",
        f"{'peak memory (GB, ' + result['peak_memory_kind'] + ')':46s} {result['peak_memory_gb']:10.2f}",
    ]
    if "flops_ratio_full_size" in result:
        f = result["flops_full_size"]
        lines.append(f"{'FLOPs (a) / (c), ' + f['preset'] + ' ' + str(f['height']) + 'x' + str(f['width']):46s} "
                     f"{result['flops_ratio_full_size']:10.1f}x  ({f['bidir_multistep_cfg'] / 1e15:.0f} vs "
                     f"{f['ar_fewstep'] / 1e15:.3f} PFLOP)")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse(Args, argv)
    result = run(args)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
