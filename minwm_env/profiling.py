"""Latency, throughput, memory and FLOP measurements of generation (used by benchmarks and eval).

All timings synchronise CUDA. Compare figures as ratios taken in one run: the machines this
runs on in CI are shared and noisy.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .generator import StreamingGenerator, generate_clip, timed
from .models import BACKBONES, PRESETS, WorldModel
from .samplers import EulerSampler


@dataclass
class FirstChunk:
    no_vae_s: float
    with_vae_s: float


def first_chunk_bidirectional(model: WorldModel, sampler: EulerSampler, num_latent_frames: int,
                              chunk_frames: int, seed: int = 0) -> FirstChunk:
    """The whole clip is denoised before anything can be shown; then its first chunk is decoded."""
    timings: dict[str, float] = {}
    with timed(timings, "total", model.device):
        with timed(timings, "denoise", model.device):
            latents = generate_clip(model, sampler, num_latent_frames=num_latent_frames, seed=seed)
        model.codec.stream().push(latents[:, :, :chunk_frames])
    return FirstChunk(timings["denoise"], timings["total"])


def first_chunk_autoregressive(model: WorldModel, sampler, seed: int = 0, compile=None) -> FirstChunk:
    generator = StreamingGenerator(model, sampler, compile=compile)
    generator.reset(seed=seed)
    out = generator.next_chunk(decode=True)
    return FirstChunk(out.timings["time/denoise_s"], out.timings["time/chunk_s"])


@dataclass
class Streaming:
    early_chunk: int
    late_chunk: int
    early_s: list[float]  # with-VAE latencies of the chunks around ``early_chunk``
    late_s: list[float]  # ... and around ``late_chunk``
    early_no_vae_s: list[float]  # the same chunks without decoding (denoise + cache write)
    late_no_vae_s: list[float]
    frames_per_s: float  # decoded frames over the time of all timed chunks

    @property
    def early_median_s(self) -> float:
        return statistics.median(self.early_s)

    @property
    def late_median_s(self) -> float:
        return statistics.median(self.late_s)

    @property
    def late_over_early(self) -> float:
        """Median of the ratios of chunks timed back to back: robust to slow drifts in load."""
        return statistics.median(late / early for early, late in zip(self.early_s, self.late_s))

    @property
    def late_over_early_no_vae(self) -> float:
        return statistics.median(late / early for early, late in zip(self.early_no_vae_s, self.late_no_vae_s))


def measure_streaming(model: WorldModel, *, early_chunk: int = 5, late_chunk: int = 200, halfwidth: int = 4,
                      batch_size: int = 1, seed: int = 0, progress=None, compile=None) -> Streaming:
    """Few-step streaming cost early and late in an episode, measured fairly on a noisy machine.

    Two generators run side by side: one is first advanced (untimed, decoding) to just before
    ``late_chunk``; then the chunks around ``early_chunk`` of one and around ``late_chunk`` of
    the other are timed alternately, so drifts in machine load hit both alike.
    """
    early, late = (StreamingGenerator(model, batch_size=batch_size, compile=compile) for _ in range(2))
    early.reset(seed=seed)
    late.reset(seed=seed)
    for generator, target in ((early, early_chunk), (late, late_chunk)):
        for _ in range(target - halfwidth):
            generator.next_chunk(decode=True)
            if progress is not None:
                progress.update(1)
    early_s, late_s, early_nv, late_nv, frames = [], [], [], [], 0
    for _ in range(2 * halfwidth + 1):
        for generator, times, no_vae in ((early, early_s, early_nv), (late, late_s, late_nv)):
            out = generator.next_chunk(decode=True)
            times.append(out.timings["time/chunk_s"])
            no_vae.append(out.timings["time/denoise_s"] + out.timings["time/cache_s"])
            frames += out.frames.shape[0] * out.frames.shape[2]
            if progress is not None:
                progress.update(1)
    return Streaming(early_chunk, late_chunk, early_s, late_s, early_nv, late_nv,
                     frames / (sum(early_s) + sum(late_s)))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    """Peak CUDA memory allocated, or on the CPU the process's peak resident set (whole process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def count_flops(preset: str, *, num_latent_frames: int, chunk_frames: int, bidir_steps: int, ar_steps: int,
                fewstep_steps: int, text_tokens: int = 512) -> dict[str, float]:
    """FLOPs of first-chunk generation for a preset's full-size architecture, on meta tensors.

    Counts the transformer over the video tokens (the VAE is excluded, as in the latency
    comparison): bidirectional = steps × (cond + uncond) × a full-clip forward; AR multi-step =
    steps × 2 × a first-chunk forward; AR few-step = steps × 1 × a first-chunk forward.
    ``text_encode`` is one prompt's text path (Wan: the cross-attention K/V; HunyuanVideo-1.5:
    the token refiner and the text stream through every block): a bidirectional sampler pays it
    at every forward, the causal model once per episode; ``ratio_with_text`` counts it so.
    Also returns ``parameters``, the transformer's parameter count.
    """

    spec = PRESETS[preset]
    transformer_class, backbone_class = BACKBONES[spec.backbone]
    factor = 16 if spec.codec == "hunyuan15-vae" else 8  # the VAE's spatial compression
    latent_h, latent_w = spec.settings.height // factor, spec.settings.width // factor
    with torch.device("meta"):
        backbone = backbone_class(transformer_class(**spec.transformer))
        text = torch.zeros(1, text_tokens, backbone.text_dim)
        with FlopCounterMode(display=False) as counter:
            prompt = backbone.encode_prompt(text)
        text_encode = float(counter.get_total_flops())

        def forward_flops(batch: int, frames: int) -> float:
            x = torch.zeros(batch, backbone.latent_channels, frames, latent_h, latent_w)
            with FlopCounterMode(display=False) as counter:
                backbone(x, torch.zeros(batch, frames), torch.arange(frames, device="cpu"),
                         type(prompt).cat([prompt] * batch))
            return float(counter.get_total_flops())

        clip = forward_flops(2, num_latent_frames)
        chunk_cfg = forward_flops(2, chunk_frames)
        chunk = forward_flops(1, chunk_frames)
        parameters = float(sum(p.numel() for p in backbone.transformer.parameters()))
    flops = {"bidir_multistep_cfg": bidir_steps * clip, "ar_multistep_cfg": ar_steps * chunk_cfg,
             "ar_fewstep": fewstep_steps * chunk, "text_encode": text_encode, "parameters": parameters}
    flops["ratio_bidir_over_ar_fewstep"] = flops["bidir_multistep_cfg"] / flops["ar_fewstep"]
    flops["ratio_with_text"] = ((flops["bidir_multistep_cfg"] + 2 * bidir_steps * text_encode)
                                / (flops["ar_fewstep"] + text_encode))
    return flops


def now_utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


__all__ = ["FirstChunk", "Streaming", "count_flops", "first_chunk_autoregressive", "first_chunk_bidirectional",
           "machine_description", "now_utc", "measure_streaming", "peak_memory_gb", "reset_peak_memory"]


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
