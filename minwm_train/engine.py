"""The training engine every stage shares: accelerate, accumulation, EMA, checkpoints, resume, logs.

A stage (see :class:`Stage`) builds its models and, for a batch, returns ``(loss, logs)`` for
one of its optimisers; the engine owns everything around that. Determinism: each step draws
its data and noise from a generator seeded by (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run (tested).

Several processes (``torchrun --nproc_per_node N -m minwm_train.cli ...`` or ``accelerate
launch``; CPU processes talk over gloo) train data-parallel: each step is ``N × grad_accum``
micro-batches, micro-batch ``m`` drawn from its own generator seeded by (seed, step, m), and
every optimiser's gradients are averaged over the processes before clipping and the update. So
N processes with accumulation A compute exactly what one process with accumulation N·A does
(tested, up to float summation order), whatever the stage calls inside its loss: DMD's
alternating generator/critic updates included. Only the main process writes checkpoints,
metrics and the exported model. With ``fsdp`` the trained models' blocks are sharded (FSDP2);
checkpoints and exports still hold full tensors, gathered from every process.

Checkpoints (``<out>/checkpoints/step-NNNNNN/``) are written to a temporary folder and renamed
into place, so a run killed at any moment resumes from its last complete checkpoint. Each
holds the stage's modules (safetensors), the EMA (safetensors), every optimiser's state
(``torch.save``, read back with ``weights_only=True``), the step, the config and the sha256 of
every weight file (:mod:`minwm_env.integrity`), checked before a resume reads them. A resumed
run's ``metrics.jsonl`` first drops the lines of the steps it is about to run again.

Nothing non-finite is trained on, saved or loaded: a NaN or inf loss or logged value stops the
run (FloatingPointError naming the step and the key) before its update, as does a non-finite
gradient norm outside fp16 (whose loss scaler skips such steps by design); a checkpoint whose
weights, EMA or optimiser state hold NaN or inf is refused, and so is loading one.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator
from torch import nn
from tqdm import tqdm

from minwm_env.integrity import check_files, check_finite, describe_non_finite, non_finite, write_manifest

from .config import TrainConfig
from .data import LatentClips

try:  # FSDP2 (torch >= 2.6)
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - older torch
    fully_shard = register_fsdp_forward_method = DTensor = distribute_tensor = None

CHECKPOINT_FILES = ("modules.safetensors", "trainer.json", "config.json")


def load_torch_file(path: Path):
    """``torch.load`` of tensors and plain containers only; ValueError naming the file otherwise.

    A file pickling anything else gets our own message: torch's suggests ``weights_only=False``,
    i.e. running whatever code the file carries, which is never the fix for a checkpoint.
    """
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a damaged zip archive raises RuntimeError, an empty file EOFError, ...
        if not (isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err)):
            raise ValueError(f"{path} cannot be read, it may be truncated or corrupted ({err})") from err
        # torch's own first reason ("Unsupported global: GLOBAL os.system ..."), not its advice
        reason = re.search(r"WeightsUnpickler error:\s*([^.\n]+)", str(err))
    # raised outside the except block, so torch's error (and its advice) is not even chained
    raise ValueError(f"{path} is not a file of tensors and plain containers: it is damaged, or it pickles other "
                     f"Python objects, which minwm never writes{f' ({reason.group(1)})' if reason else ''}. It is "
                     f"not loaded: unpickling it could run arbitrary code")


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The generator of micro-batch ``micro`` of ``step`` (data and noise): a pure function of its
    arguments, so resumed and multi-process runs draw exactly what one uninterrupted process would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + micro * 1_000_000_007)


class Stage(ABC):
    """One training stage: its models, optimisers, loss and export."""

    name: str

    def __init__(self, config: TrainConfig, device: torch.device):
        self.config, self.device = config, device
        # Seeded by (seed, step) alone and shared by every process and micro-batch of the step:
        # for choices that must agree across processes (e.g. how many forwards a rollout runs).
        self.shared_generator: torch.Generator | None = None

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state a checkpoint must hold (trained ones and stage-owned targets)."""

    @abstractmethod
    def param_groups(self) -> dict[str, dict]:
        """Optimiser name → {"params": [...], "lr": ..., "betas": ...}."""

    def updates(self, step: int) -> list[str]:
        """Which optimisers step at ``step`` (default: the only one)."""
        return list(self.param_groups())

    @abstractmethod
    def loss(self, optimizer: str, batch: dict, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The loss to minimise for ``optimizer`` on ``batch`` and scalar logs."""

    def ema_module(self) -> nn.Module | None:
        """The module whose EMA is kept and exported (the trained model)."""
        return None

    def after_update(self, optimizer: str, step: int) -> None:
        """Hook after an optimiser step (e.g. a consistency target's own EMA)."""

    def prepare(self, data: LatentClips) -> None:
        """One-off work before training (e.g. generating ODE pairs)."""

    @abstractmethod
    def export(self, folder: Path, ema_state: dict[str, torch.Tensor] | None, model=None) -> None:
        """Write a model folder that ``minwm_env`` loads (from ``model``, an unsharded copy of
        the exported model, when given: under FSDP the stage's own is sharded)."""

    def export_source(self) -> str:
        """What the exported model was built from (an unsharded copy is built from it)."""
        return self.config.model


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered to a plain tensor (collective); a plain tensor as it is."""
    return tensor.full_tensor() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def _like(value: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor) sharded like ``template`` when that is a DTensor."""
    if DTensor is not None and isinstance(template, DTensor):
        return distribute_tensor(value.to(template.dtype), template.device_mesh, template.placements)
    return value.to(template.dtype)


class EMA:
    """Exponential moving average of a module's floating-point parameters (kept in float32)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    def full_state(self) -> dict[str, torch.Tensor]:
        """The EMA as plain tensors (collective under FSDP: every process must call it)."""
        return {k: _full(v).contiguous() for k, v in self.state.items()}

    def load_full_state(self, state: dict[str, torch.Tensor], device) -> None:
        missing = sorted(set(self.state) - set(state))
        if missing:
            raise ValueError(f"the EMA state lacks {len(missing)} tensors of the model, e.g. {missing[:3]}")
        self.state = {k: _like(state[k].to(device), template) for k, template in self.state.items()}

    @torch.no_grad()
    def restart(self, module: nn.Module) -> None:
        """The average starts over from ``module``'s current weights."""
        for key, value in module.state_dict().items():
            if key in self.state:
                self.state[key].copy_(value.detach().float())

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for key, value in module.state_dict().items():
            if key in self.state:
                self.state[key].mul_(self.decay).add_(value.detach().float(), alpha=1 - self.decay)


class Trainer:
    def __init__(self, config: TrainConfig, stage: Stage, data: LatentClips):
        self.config, self.stage, self.data = config, stage, data
        # Mixed precision is ours (autocast + a loss scaler for fp16), not accelerate's: its
        # process-wide state refuses a second Trainer with another precision in one process.
        self.accelerator = Accelerator(cpu=stage.device.type == "cpu")
        self.autocast_dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.mixed_precision]
        self.out = Path(config.out)
        self.checkpoints = self.out / "checkpoints"
        self.num_processes, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        if config.fsdp:
            self._broadcast_modules()  # before sharding: every process shards the same weights
            self._shard()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for name, group in stage.param_groups().items():
            params = [p for p in group["params"] if p.requires_grad]
            if not params:
                raise ValueError(f"optimiser {name!r} of {stage.name} has no trainable parameters")
            self.optimizers[name] = torch.optim.AdamW(params, lr=group.get("lr", config.lr),
                                                      betas=tuple(group.get("betas", config.betas)),
                                                      weight_decay=config.weight_decay)
        for name in list(self.optimizers):
            self.optimizers[name] = self.accelerator.prepare(self.optimizers[name])
        self.scalers = {name: torch.amp.GradScaler(stage.device.type, enabled=config.mixed_precision == "fp16")
                        for name in self.optimizers}
        ema_target = stage.ema_module()
        self.ema = EMA(ema_target, config.ema_decay) if config.ema_decay > 0 and ema_target is not None else None
        self.step = 0

    # -- several processes ---------------------------------------------------------------------
    def _shard(self) -> None:
        """FSDP2: each trained module's units (its ``fsdp_layout``: the blocks of a CausalWan),
        then the module itself, are sharded over the processes. Parameters the layout keeps
        replicated (a CausalWan's prompt path, used outside any block's forward) have their
        gradients averaged like the data-parallel ones."""
        if fully_shard is None:
            raise ValueError("--fsdp needs torch >= 2.6 (torch.distributed.fsdp.fully_shard)")
        if self.num_processes == 1:
            raise ValueError("--fsdp shards over several processes: launch with torchrun --nproc-per-node N")
        for module in self.stage.modules().values():
            if not any(p.requires_grad for p in module.parameters()):
                continue
            if not hasattr(module, "fsdp_layout"):
                raise ValueError(f"--fsdp: {type(module).__name__} does not say how to shard it (fsdp_layout)")
            units, replicated = module.fsdp_layout()
            for unit in units:
                fully_shard(unit, ignored_params=replicated)
            fully_shard(module, ignored_params=replicated)
            # methods other than forward that run sharded units (a HunyuanVideo-1.5 adapter's
            # encode_prompt runs the text stream through its blocks) must gather their weights too
            for method in getattr(module, "fsdp_forward_methods", ()):
                register_fsdp_forward_method(module, method)

    def _broadcast_modules(self) -> None:
        """Every process starts from the main process's weights (they build the same seeded
        models, but a checkpoint or a file read differently must not split them)."""
        if self.num_processes == 1:
            return
        for module in self.stage.modules().values():
            for tensor in list(module.parameters()) + list(module.buffers()):
                if DTensor is not None and isinstance(tensor, DTensor):
                    continue  # sharded from identical weights (broadcast before sharding)
                torch.distributed.broadcast(tensor.data, src=0)

    def _average_gradients(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        """All-reduce the mean of the gradients of ``optimizer``'s parameters over the processes
        (one flat buffer: one collective per update)."""
        if self.num_processes == 1:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
                  and not (DTensor is not None and isinstance(p.grad, DTensor))]  # FSDP reduced those already
        sizes = torch.tensor([len(params), sum(p.numel() for p in params)], dtype=torch.float64, device=self.stage.device)
        gathered = self.accelerator.gather(sizes[None]).view(-1, 2)
        if not (gathered == sizes).all():
            raise RuntimeError(f"optimiser {name!r}: the processes computed gradients for different parameters "
                               f"(count, elements per process: {gathered.tolist()}); a stage's loss must touch the "
                               f"same parameters on every process")
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.num_processes
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def _average_logs(self, logs: dict[str, float]) -> dict[str, float]:
        if self.num_processes == 1:
            return logs
        keys = sorted(k for k in logs if k != "step" and not k.startswith("grad_norm/"))
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.stage.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return {**logs, **dict(zip(keys, values.tolist()))}

    # -- checkpoints ---------------------------------------------------------------------------
    def _module_state(self) -> dict[str, torch.Tensor]:
        """Every module's state as plain tensors (collective under FSDP)."""
        return {f"{name}/{key}": _full(value.detach()).contiguous().cpu()
                for name, module in self.stage.modules().items() for key, value in module.state_dict().items()}

    def _optimizer_state(self, optimizer) -> dict:
        """The optimiser's state with every sharded tensor gathered (collective under FSDP)."""
        state = optimizer.state_dict()
        if self.config.fsdp:
            state = {**state, "state": {index: {k: _full(v) for k, v in entry.items()}
                                        for index, entry in state["state"].items()}}
        return state

    def _load_optimizer_state(self, optimizer, state: dict) -> None:
        if self.config.fsdp:  # full tensors back into the shards of their parameters
            params = [p for group in optimizer.param_groups for p in group["params"]]
            state = {**state, "state": {index: {k: _like(v.to(params[int(index)].device), params[int(index)])
                                                if torch.is_tensor(v) and v.shape == params[int(index)].shape else v
                                                for k, v in entry.items()}
                                        for index, entry in state["state"].items()}}
        optimizer.load_state_dict(state)

    def save_checkpoint(self) -> Path:
        final = self.checkpoints / f"step-{self.step:06d}"
        # gathering is collective: every process takes part, the main one writes
        modules = self._module_state()
        ema = None if self.ema is None else self.ema.full_state()
        optimizers = {name: self._optimizer_state(opt) for name, opt in self.optimizers.items()}
        # every process holds the same full tensors, so all of them refuse together
        tensors = {**{f"modules/{k}": v for k, v in modules.items()},
                   **{f"ema/{k}": v for k, v in (ema or {}).items()},
                   **{f"optimizer-{name}/{index}/{k}": v for name, state in optimizers.items()
                      for index, entry in state["state"].items() for k, v in entry.items()}}
        if counts := non_finite(tensors):
            raise FloatingPointError(f"after step {self.step - 1} the training state holds NaN or inf in "
                                     f"{describe_non_finite(tensors, counts)}; checkpoint {final.name} is not written")
        if self.is_main:
            self._write_checkpoint(final, modules, ema, optimizers)
        self.accelerator.wait_for_everyone()
        return final

    def _write_checkpoint(self, final: Path, modules: dict, ema: dict | None, optimizers: dict) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoints / f".step-{self.step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        safetensors.torch.save_file(modules, tmp / "modules.safetensors")
        if ema is not None:
            safetensors.torch.save_file({k: v.cpu() for k, v in ema.items()}, tmp / "ema.safetensors")
        for name, state in optimizers.items():
            torch.save(state, tmp / f"optimizer-{name}.pt")
            if self.scalers[name].is_enabled():
                torch.save(self.scalers[name].state_dict(), tmp / f"scaler-{name}.pt")
        write_manifest(tmp)  # every weight file above, hashed before the folder becomes a checkpoint
        (tmp / "trainer.json").write_text(json.dumps({"step": self.step, "stage": self.stage.name}) + "\n")
        self.config.save(tmp / "config.json")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint folder that exists is complete
        pointer = self.checkpoints / "latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, self.checkpoints / "latest")
        kept = sorted(p for p in self.checkpoints.glob("step-*") if p.is_dir())
        for old in kept[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoints / "latest"
        if not pointer.is_file():
            return None
        path = self.checkpoints / pointer.read_text().strip()
        if not path.is_dir():
            raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist; delete {pointer} to start over")
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        for name in CHECKPOINT_FILES + tuple(f"optimizer-{n}.pt" for n in self.optimizers):
            if not (path / name).is_file():
                raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing")
        scalers = [n for n, scaler in self.scalers.items()
                   if scaler.is_enabled() and (path / f"scaler-{n}.pt").is_file()]
        # against the checkpoint's sha256 manifest (one written before manifests: content checks alone)
        check_files(path, ["modules.safetensors", *(["ema.safetensors"] if self.ema is not None else []),
                           *(f"optimizer-{n}.pt" for n in self.optimizers), *(f"scaler-{n}.pt" for n in scalers)])
        try:
            state = safetensors.torch.load_file(path / "modules.safetensors")
        except Exception as err:
            raise ValueError(f"{path / 'modules.safetensors'} is not a readable safetensors file ({err})") from err
        check_finite(state, path / "modules.safetensors")
        for name, module in self.stage.modules().items():
            prefix = f"{name}/"
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                if self.config.fsdp:
                    current = module.state_dict()
                    own = {k: _like(v.to(self.stage.device), current[k]) if k in current else v for k, v in own.items()}
                module.load_state_dict(own, strict=True)
            except RuntimeError as err:
                raise ValueError(f"{path} does not match this stage's {name!r} module: {err}") from err
        if self.ema is not None:
            ema_path = path / "ema.safetensors"
            if not ema_path.is_file():
                raise FileNotFoundError(f"checkpoint {path} has no ema.safetensors but EMA is on")
            try:
                ema_state = safetensors.torch.load_file(ema_path)
            except Exception as err:
                raise ValueError(f"{ema_path} cannot be loaded ({err})") from err
            check_finite(ema_state, ema_path)
            try:
                self.ema.load_full_state(ema_state, self.stage.device)
            except Exception as err:
                raise ValueError(f"{ema_path} cannot be loaded ({err})") from err
        for name, optimizer in self.optimizers.items():
            file = path / f"optimizer-{name}.pt"
            optimizer_state = load_torch_file(file)
            try:
                tensors = {f"{index}/{k}": v for index, entry in optimizer_state["state"].items()
                           for k, v in entry.items()}
            except (KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"{file} is not an optimiser state ({err!r})") from err
            check_finite(tensors, file)
            try:
                self._load_optimizer_state(optimizer, optimizer_state)
            except Exception as err:
                raise ValueError(f"{file} does not fit this stage's {name!r} optimiser ({err})") from err
            if name in scalers:
                file = path / f"scaler-{name}.pt"
                try:
                    self.scalers[name].load_state_dict(load_torch_file(file))
                except ValueError:
                    raise
                except Exception as err:
                    raise ValueError(f"{file} does not fit this stage's loss scaler ({err})") from err
        try:
            self.step = int(json.loads((path / "trainer.json").read_text())["step"])
        except (json.JSONDecodeError, KeyError, ValueError) as err:
            raise ValueError(f"{path / 'trainer.json'} is damaged ({err})") from err

    def _drop_metrics_from_step(self, log_path: Path) -> None:
        """Keep only the metrics of the steps before ``self.step``: a run killed after its last
        checkpoint logged steps it now runs again, and each step is logged once. Rewritten to a
        temporary file and renamed, so a kill now loses nothing."""
        if not log_path.is_file():
            return
        lines = log_path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                if number == len(lines):  # the line a kill cut short
                    break
                raise ValueError(f"{log_path} line {number} is not a line of metrics ({err!r})") from err
            if step < self.step:
                kept.append(line)
        if len(kept) == len(lines):
            return
        tmp = log_path.with_name(log_path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, log_path)

    def _stop_if_non_finite(self, what: str, problems: list[str]) -> None:
        """FloatingPointError if this process or another found non-finite values: every process
        raises together (one left running would wait forever in the next collective)."""
        others = []
        if self.num_processes > 1:
            flags = self.accelerator.gather(torch.tensor([float(bool(problems))], device=self.stage.device))
            others = [rank for rank, flag in enumerate(flags.tolist()) if flag and rank != self.rank]
        if not problems and not others:
            return
        found = "; ".join(problems) if problems else f"on processes {others} (their own errors name the values)"
        latest = self.checkpoints / "latest"
        last = latest.read_text().strip() if latest.is_file() else "none"
        raise FloatingPointError(f"step {self.step}: {what} is not finite: {found}. Training stops before a "
                                 f"checkpoint or export of the damage (last checkpoint: {last})")

    # -- the loop ------------------------------------------------------------------------------
    def _clip(self, optimizer: torch.optim.Optimizer) -> float:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.config.max_grad_norm <= 0 or not params:
            return 0.0
        if not self.config.fsdp:
            return float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        # FSDP: the squares of the sharded gradients are summed over the processes, the
        # replicated ones (the prompt path) counted once
        sharded = [p.grad for p in params if isinstance(p.grad, DTensor)]
        replicated = [p.grad for p in params if not isinstance(p.grad, DTensor)]
        square = sum((g.to_local().float().square().sum() for g in sharded), torch.zeros((), device=self.stage.device))
        torch.distributed.all_reduce(square)
        square = square + sum((g.float().square().sum() for g in replicated), torch.zeros((), device=self.stage.device))
        norm = float(square.sqrt())
        scale = min(1.0, self.config.max_grad_norm / (norm + 1e-6))
        if scale < 1.0:
            for p in params:
                p.grad.mul_(scale)
        return norm

    def run(self, resume: bool = True) -> list[dict]:
        """Train up to ``config.steps``; returns the metrics of the steps run now."""
        config = self.config
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            config.save(self.out / "config.json")
        self.accelerator.wait_for_everyone()
        if resume and (latest := self.latest_checkpoint()) is not None:
            self.load_checkpoint(latest)
        log_path = self.out / "metrics.jsonl"
        if self.is_main:
            self._drop_metrics_from_step(log_path)
        self._broadcast_modules()
        # one-off work (ODE pairs) is done and stored by the main process; the others read it
        if self.is_main:
            self.stage.prepare(self.data)
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            self.stage.prepare(self.data)
        writer = None
        if config.tensorboard and self.is_main:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(self.out / "tensorboard"))
        history = []
        bar = tqdm(total=config.steps, initial=self.step, desc=self.stage.name, file=sys.stderr,
                   disable=None if self.is_main else True)
        while self.step < config.steps:
            began = time.perf_counter()
            # this process's micro-batches of the step: rank r holds r·A .. r·A + A − 1
            generators = [step_generator(config.seed, self.step, self.rank * config.grad_accum + a)
                          for a in range(config.grad_accum)]
            logs: dict[str, float] = {"step": self.step}
            for name in self.stage.updates(self.step):
                optimizer, scaler = self.optimizers[name], self.scalers[name]
                optimizer.zero_grad(set_to_none=True)
                problems = []
                for generator in generators:
                    # the same stream for every micro-batch, on every process
                    self.stage.shared_generator = step_generator(config.seed + 1, self.step)
                    batch = {k: v.to(self.stage.device) for k, v in self.data.sample(config.batch_size, generator).items()}
                    with torch.autocast(self.stage.device.type, dtype=self.autocast_dtype,
                                        enabled=self.autocast_dtype is not None):
                        loss, extra = self.stage.loss(name, batch, self.step, generator)
                    scaler.scale(loss / config.grad_accum).backward()
                    values = {key: float(value) for key, value in extra.items()}
                    problems += [f"{key} = {value}" for key, value in values.items() if not math.isfinite(value)]
                    if not torch.isfinite(loss.detach()).all() and not problems:
                        problems.append(f"its loss = {loss.detach().float().sum().item()}")
                    for key, value in values.items():
                        logs[key] = logs.get(key, 0.0) + value / config.grad_accum
                self._stop_if_non_finite(f"the {name!r} update's loss", problems)
                self._average_gradients(optimizer, name)
                scaler.unscale_(optimizer)  # fp16 only: true gradients before clipping
                logs[f"grad_norm/{name}"] = self._clip(optimizer)
                # fp16's scaler skips steps whose gradients overflowed (and lowers its scale): by
                # design, not damage. Elsewhere a non-finite norm means the update would write
                # NaN into the weights. (The norm is the same on every process: averaged gradients.)
                if not scaler.is_enabled() and not math.isfinite(logs[f"grad_norm/{name}"]):
                    raise FloatingPointError(f"step {self.step}: the gradient norm of the {name!r} update is "
                                             f"{logs[f'grad_norm/{name}']} though its loss is finite; training "
                                             f"stops before the update writes it into the weights")
                scaler.step(optimizer)  # skips the update if fp16 gradients overflowed
                scaler.update()
                self.stage.after_update(name, self.step)
            if self.ema is not None and self.step == config.ema_start:
                # the average starts from the weights of this step, not from the initial ones (an
                # EMA that kept the start, at decay 0.999 over 1500 steps, would still hold 22% of it)
                self.ema.restart(self.stage.ema_module())
            elif self.ema is not None and self.step > config.ema_start:
                self.ema.update(self.stage.ema_module())
            self.step += 1
            logs["time/step_s"] = time.perf_counter() - began
            logs = self._average_logs(logs)
            history.append(logs)
            if self.is_main and (self.step % config.log_every == 0 or self.step == config.steps):
                with open(log_path, "a") as f:
                    f.write(json.dumps(logs) + "\n")
                if writer is not None:
                    for key, value in logs.items():
                        if key != "step":
                            writer.add_scalar(key, value, self.step)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k.startswith("loss/")})
            if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                self.save_checkpoint()
        bar.close()
        if writer is not None:
            writer.close()
        self._export()
        return history

    def _export(self) -> None:
        folder = self.out / "model"
        if not self.config.fsdp:
            if self.is_main:
                self.stage.export(folder, None if self.ema is None else self.ema.state)
            self.accelerator.wait_for_everyone()
            return
        # FSDP: gather (every process), then the main process writes an unsharded copy
        ema = None if self.ema is None else self.ema.full_state()
        modules = self._module_state()
        if self.is_main:
            from .stages.common import build_model
            copy = build_model(self.config, self.stage.export_source(), torch.device("cpu"), trainable=False)
            exported = self.stage.ema_module()
            name = next(n for n, m in self.stage.modules().items() if m is exported)
            copy.backbone.load_state_dict({k[len(name) + 1:]: v for k, v in modules.items() if k.startswith(name + "/")})
            self.stage.export(folder, ema, model=copy)
        self.accelerator.wait_for_everyone()
