"""Stage 2a: causal ODE distillation (docs/design.md §7; CausVid's ODE initialisation).

    minwm-train stage2a --preset tiny --model runs/stage1/model --teacher runs/stage1/model \\
        --data ... --out runs/stage2a

First the stage-1 AR model, as teacher, runs a many-step sampler (``ode_teacher_steps`` Euler
steps, CFG ``ode_guidance``) chunk by chunk from each clip's start frame under the clip's
actions; the states it passes through at the student's timesteps (steps 0/12/24/36 of 48 for
1000/750/500/250) and its endpoint are stored once (``<out>/ode_pairs.safetensors``, reused
on resume; the same seed reproduces them exactly). Then the few-step student regresses the
endpoint x0 from each stored state, with the teacher's clean endpoints as its causal context
(the stage-1 layout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors.torch
import torch

from minwm_env import flow
from minwm_env.generator import StreamingGenerator
from minwm_env.samplers import EulerSampler

from .common import SingleModelStage, build_model, prompt_state, squared_error, student_sigmas, teacher_forcing_layout

PAIRS_FILE = "ode_pairs.safetensors"


def record_indices(teacher_steps: int, student_timesteps) -> list[int]:
    """Teacher grid steps whose states sit at the student's timesteps (before shifting, both grids
    are uniform in t, so step i of N is at t = 1000 (1 - i / N))."""
    indices = []
    for t in student_timesteps:
        exact = teacher_steps * (1 - float(t) / 1000)
        if abs(exact - round(exact)) > 1e-6:
            raise ValueError(f"student timestep {t} is not on the teacher's {teacher_steps}-step grid")
        indices.append(int(round(exact)))
    return indices


@torch.no_grad()
def generate_ode_pairs(teacher, clips: dict, *, chunk_frames: int, teacher_steps: int, guidance: float,
                       student_timesteps, shift: float, seed: int) -> dict[str, torch.Tensor]:
    """Run the teacher over ``clips`` and record its states at the student's timesteps.

    Returns ``states`` (N, S, C, F - 1, h, w), ``x0`` (N, C, F, h, w) with the clip's start frame
    first, and the clips' conditions ``w2c``, ``intrinsics``, ``actions``.
    """
    latents = clips["latents"]
    batch, _, num_frames = latents.shape[:3]
    indices = record_indices(teacher_steps, student_timesteps)
    sampler = EulerSampler(num_steps=teacher_steps, shift=shift, guidance_scale=guidance)
    generator = StreamingGenerator(teacher, sampler, batch_size=batch, chunk_frames=chunk_frames)
    generator.reset(seed=seed, start_latents=latents[:, :, :1], decode=False)
    states, outputs = [], [latents[:, :, :1]]
    actions = clips.get("actions")
    for start in range(1, num_frames, chunk_frames):
        recorded = {}

        def on_step(i, sigma, x):
            if i in indices:
                recorded[i] = x.clone()

        chunk_actions = None if actions is None else actions[:, start:start + chunk_frames]
        out = generator.next_chunk(chunk_actions, decode=False, on_step=on_step)
        states.append(torch.stack([recorded[i] for i in indices], dim=1))  # (N, S, C, chunk, h, w)
        outputs.append(out.latents)
    pairs = {"states": torch.cat(states, dim=3), "x0": torch.cat(outputs, dim=2),
             "w2c": clips["w2c"], "intrinsics": clips["intrinsics"]}
    if actions is not None:
        pairs["actions"] = actions
    return pairs


class CausalODEStage(SingleModelStage):
    name = "stage2a"
    few_step = True

    def __init__(self, config, device):
        super().__init__(config, device)
        self.teacher_source = config.teacher or config.model
        self.pairs: dict[str, torch.Tensor] | None = None

    def _settings(self) -> dict:
        c = self.config
        return {"teacher": self.teacher_source, "teacher_steps": c.ode_teacher_steps, "guidance": c.ode_guidance,
                "student_timesteps": list(c.student_timesteps), "shift": c.shift, "seed": c.seed,
                "num_clips": c.ode_num_clips, "chunk_frames": c.chunk_frames, "data": c.data}

    def prepare(self, data) -> None:
        path = Path(self.config.out) / PAIRS_FILE
        settings = self._settings()
        if path.is_file():
            with safetensors.safe_open(str(path), framework="pt") as handle:
                stored = json.loads(handle.metadata().get("settings", "{}"))
            if stored != settings:
                raise ValueError(f"{path} was generated with other settings ({stored}); delete it or change --out")
            self.pairs = safetensors.torch.load_file(path)
        else:
            teacher = build_model(self.config, self.teacher_source, self.device, trainable=False)
            clips = data.batch(torch.arange(min(self.config.ode_num_clips, len(data))))
            clips = {k: v.to(self.device) for k, v in clips.items()}
            self.pairs = generate_ode_pairs(
                teacher, clips, chunk_frames=self.config.chunk_frames, teacher_steps=self.config.ode_teacher_steps,
                guidance=self.config.ode_guidance, student_timesteps=self.config.student_timesteps,
                shift=self.config.shift, seed=self.config.seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            safetensors.torch.save_file({k: v.contiguous().cpu() for k, v in self.pairs.items()}, tmp,
                                        metadata={"settings": json.dumps(settings)})
            os.replace(tmp, path)
        self.pairs = {k: v.to(self.device) for k, v in self.pairs.items()}

    def loss(self, optimizer, batch, step, generator):
        pairs = self.pairs
        index = torch.randint(pairs["x0"].shape[0], (self.config.batch_size,), generator=generator)
        x0 = pairs["x0"][index]
        states = pairs["states"][index]  # (B, S, C, F - 1, h, w)
        batch_size, num_steps = states.shape[:2]
        chunk = self.config.chunk_frames
        num_chunks = states.shape[3] // chunk
        # One student step per chunk: its stored teacher state is the noisy input.
        choice = torch.randint(num_steps, (batch_size, num_chunks), generator=generator).to(x0.device)
        per_frame = choice.repeat_interleave(chunk, dim=1)  # (B, F - 1)
        gather = per_frame[:, None, None, :, None, None].expand(-1, 1, *states.shape[2:])
        noisy = states.gather(1, gather).squeeze(1)
        sigma = torch.tensor(student_sigmas(self.config), device=x0.device)[per_frame]
        clips = {key: pairs[key][index] for key in ("w2c", "intrinsics", "actions") if key in pairs}
        x, timestep, positions, mask, all_conds, split, reference = teacher_forcing_layout(self.model, x0, noisy, sigma,
                                                                                           chunk, clips)
        prediction = self.model.backbone(x, timestep, positions, prompt_state(self.model, {}, batch_size),
                                         frame_mask=mask, conditions=all_conds, reference=reference)
        estimate = flow.to_x0(prediction[:, :, split:], noisy, sigma, self.model.backbone.prediction_type)
        loss = squared_error(self.model, estimate, x0[:, :, 1:], reference[:, :, split:], self.config.unseen_weight)
        return loss, {"loss/ode": loss.detach()}

