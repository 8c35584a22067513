"""Folded clean writes (docs/design.md §6) against separate clean passes: transformer forwards,
FLOPs and wall time per steady chunk, measured in the same run, interleaved.

    python benchmarks/fold_writes.py --model minwm-default --chunks 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from minwm_env.generator import StreamingGenerator
from minwm_env.models import load_model
from minwm_env.profiling import machine_description, now_utc


def _generator(model, fold: bool, batch: int) -> StreamingGenerator:
    generator = StreamingGenerator(model, batch_size=batch)
    generator.stream.fold_writes = fold and generator.stream.fold_writes
    generator.reset(seed=list(range(batch)), decode=False)
    generator.next_chunk(decode=False)  # the first chunk has no pending write
    return generator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minwm-default")
    parser.add_argument("--chunks", type=int, default=40, help="timed steady chunks per variant")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    model = load_model(args.model, memory_frames=0, device=args.device, dtype=getattr(torch, args.dtype))
    generators = {fold: _generator(model, fold, args.batch) for fold in (True, False)}
    result = {"date": now_utc(), "machine": machine_description(model.device), "model": args.model,
              "batch": args.batch, "chunk_frames": generators[True].stream.chunk_frames}
    for fold, generator in generators.items():
        before = generator.stream.num_forwards
        calls = []
        handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
        with FlopCounterMode(display=False) as counter:
            generator.next_chunk(decode=False)
        handle.remove()
        result["folded" if fold else "separate"] = {"backbone_forwards_per_chunk": len(calls),
                                                    "denoising_forwards": generator.stream.num_forwards - before,
                                                    "flops_per_chunk": float(counter.get_total_flops())}
    times = {True: [], False: []}
    with torch.no_grad():
        for _ in range(args.chunks):
            for fold, generator in generators.items():  # interleaved: both see the same machine
                _sync(model.device)
                start = time.perf_counter()
                generator.next_chunk(decode=False)
                _sync(model.device)
                times[fold].append(time.perf_counter() - start)
    result["folded"]["median_chunk_s"] = statistics.median(times[True])
    result["separate"]["median_chunk_s"] = statistics.median(times[False])
    result["time_ratio_folded_over_separate"] = result["folded"]["median_chunk_s"] / result["separate"]["median_chunk_s"]
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
