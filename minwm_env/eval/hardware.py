"""Hardware sensitivity: first-frame latency, streaming frames/s and peak memory per device,
dtype and batch size (built on :mod:`minwm_env.profiling`).

    rows = hardware_table("tiny", configs=default_configs(quick=True))

Latency is that of the first chunk of a fresh episode (its frames arrive together): with the
VAE (denoise + decode: the first frame a user sees) and without it (denoise only, what a
latent-space agent waits for). Each is the median of ``repeats`` runs after one warm-up run.
Streaming frames/s is :func:`~minwm_env.profiling.measure_streaming` (decoded frames over the
time of the timed chunks, early and late in an episode, all batch rows counted). Peak memory
on CUDA is per configuration; on the CPU it is the process's peak resident set so far, so it
only ever grows down the table.
"""

from __future__ import annotations

import gc
import statistics
from dataclasses import asdict, dataclass

import torch

from ..envs.world_model import DTYPES
from ..generator import StreamingGenerator
from ..models import WorldModel, load_model
from ..profiling import machine_description, measure_streaming, peak_memory_gb, reset_peak_memory


@dataclass(frozen=True)
class HardwareConfig:
    device: str
    dtype: str
    batch_size: int


def default_configs(quick: bool = False) -> list[HardwareConfig]:
    """float32 and bfloat16 at batch 1 and 4 on the CPU, and on CUDA (float16 too) when a GPU is
    present; ``quick`` leaves out bfloat16 at batch 4 (bfloat16 convolutions are slow on most
    CPUs: the tiny preset's VAE decodes about 8x slower than in float32)."""
    configs = [HardwareConfig("cpu", "float32", 1), HardwareConfig("cpu", "bfloat16", 1),
               HardwareConfig("cpu", "float32", 4)]
    if not quick:
        configs.append(HardwareConfig("cpu", "bfloat16", 4))
    if torch.cuda.is_available():
        configs += [HardwareConfig("cuda", dtype, batch) for dtype in ("float32", "bfloat16", "float16")
                    for batch in (1, 4)]
    return configs


def first_chunk_s(model: WorldModel, batch_size: int, seed: int = 0) -> tuple[float, float]:
    """(with VAE, without VAE) seconds to the first chunk of a fresh batch of episodes."""
    generator = StreamingGenerator(model, batch_size=batch_size)
    generator.reset(seed=seed)
    out = generator.next_chunk(decode=True)
    return out.timings["time/chunk_s"], out.timings["time/denoise_s"]


def measure_config(model_source, config: HardwareConfig, *, repeats: int = 3, early_chunk: int = 5,
                   late_chunk: int = 20, halfwidth: int = 2) -> dict:
    """One row of the table (see the module doc)."""
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
    device = torch.device(config.device)
    reset_peak_memory(device)
    model = load_model(model_source, device=device, dtype=DTYPES[config.dtype])
    with torch.no_grad():
        first_chunk_s(model, config.batch_size)  # warm-up: lazy initialisation, allocator, kernels
        runs = [first_chunk_s(model, config.batch_size, seed=i) for i in range(repeats)]
        first, first_no_vae = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        streaming = measure_streaming(model, early_chunk=early_chunk, late_chunk=late_chunk, halfwidth=halfwidth,
                                      batch_size=config.batch_size)
    memory, memory_kind = peak_memory_gb(device)
    row = {**asdict(config), "first_chunk_s": first, "first_chunk_no_vae_s": first_no_vae,
           "chunk_s": streaming.early_median_s, "frames_per_s": streaming.frames_per_s,
           "late_over_early": streaming.late_over_early, "peak_memory_gb": memory, "memory": memory_kind,
           "machine": machine_description(device)}
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def hardware_table(model_source, configs: list[HardwareConfig] | None = None, *, quick: bool = False) -> list[dict]:
    """Rows for every configuration; a configuration that fails (e.g. a dtype the device
    does not support) gives a row with its ``error`` instead of stopping the table."""
    configs = configs if configs is not None else default_configs(quick)
    sizes = dict(repeats=1, early_chunk=1, late_chunk=2, halfwidth=0) if quick else {}
    rows = []
    for config in configs:
        try:
            rows.append(measure_config(model_source, config, **sizes))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
            rows.append({**asdict(config), "error": f"{type(err).__name__}: {err}"})
    return rows


__all__ = ["HardwareConfig", "default_configs", "first_chunk_s", "hardware_table", "measure_config"]
