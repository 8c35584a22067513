"""Static-shape streaming (issue 24, item 2) on the CPU: graphs compiled per chunk and eager
time per chunk, static cache against the growing slice.

    python benchmarks/static_cache.py [--chunks 10] [--repeats 3] [--presets tiny default]

* graphs: ``torch.compile(backend=<counting aot_eager>, dynamic=False)`` of the backbone's whole
  forward on a growing-slice stream (what a first trial did: bookkeeping breaks the graph and
  every new cache length recompiles) against the stream's ``compile`` option (static cache,
  bookkeeping done before the compiled forward); the cumulative count after each chunk.
* time: eager streams, static and not, interleaved in one process (medians of per-chunk
  times after the first chunk), so both see the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.backends.registry import lookup_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import randomize_  # noqa: E402

from minwm_env.generator import StreamingGenerator  # noqa: E402
from minwm_env.models import build_preset, load_model  # noqa: E402
from minwm_env.samplers import FewStepSampler  # noqa: E402


def model_of(preset: str):
    model = load_model("tiny") if preset == "tiny" else build_preset(preset)
    randomize_(model.backbone)
    return model


def rollout(model, chunks: int, batch: int = 2, **options) -> list[float]:
    """Seconds of each chunk of a stream (start image, turning camera, no decoding)."""
    generator = StreamingGenerator(model, FewStepSampler(timesteps=(1000.0, 500.0), shift=1.0), batch_size=batch,
                                   **options)
    image = torch.rand(batch, 3, model.settings.height, model.settings.width,
                       generator=torch.Generator().manual_seed(1)) * 2 - 1
    generator.reset(seed=list(range(batch)), image=image, decode=False)
    actions = torch.zeros(batch, generator.chunk_frames, generator.action_spec.dim)
    if generator.tracks_camera:
        actions[..., 3] = 4.0
    times = []
    for _ in range(chunks):
        start = time.perf_counter()
        generator.next_chunk(actions, decode=False)
        times.append(time.perf_counter() - start)
    return times


def graph_counts(model, chunks: int, static: bool) -> list[int]:
    graphs: list = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    counts = []
    if static:
        original = None
        options = dict(compile=counting)
    else:
        original = model.backbone.forward
        model.backbone.forward = torch.compile(original, backend=counting, dynamic=False)
        options = {}
    try:
        generator = StreamingGenerator(model, FewStepSampler(timesteps=(1000.0, 500.0), shift=1.0), batch_size=2,
                                       **options)
        generator.reset(seed=[0, 1], image=torch.zeros(2, 3, model.settings.height, model.settings.width),
                        decode=False)
        for _ in range(chunks):
            generator.next_chunk(None, decode=False)
            counts.append(len(graphs))
    finally:
        if original is not None:
            model.backbone.forward = original
        torch._dynamo.reset()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", nargs="+", default=["tiny", "default"])
    parser.add_argument("--no-graphs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for preset in args.presets:
        model = model_of(preset)
        settings = model.settings
        print(f"{preset}: chunk {settings.chunk_frames} frames, window {settings.window_frames}, "
              f"sink {settings.sink_frames}, batch 2, 2 sampler steps, folded writes")
        if not args.no_graphs:
            print(f"  graphs, growing slice + torch.compile(forward): {graph_counts(model, args.chunks, False)}")
            print(f"  graphs, static cache + compile option:          {graph_counts(model, args.chunks, True)}")
        slice_times, static_times = [], []
        for _ in range(args.repeats):
            with torch.no_grad():
                slice_times += rollout(model, args.chunks)[1:]
                static_times += rollout(model, args.chunks, static_shapes=True)[1:]
        a, b = statistics.median(slice_times), statistics.median(static_times)
        print(f"  eager s/chunk: growing slice {a:.4f}, static {b:.4f}, static/slice {b / a:.3f} "
              f"({len(slice_times)} chunks each)")


if __name__ == "__main__":
    main()
