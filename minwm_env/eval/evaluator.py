"""The evaluation suites of docs/design.md §8, run on a model env against the ground-truth env.

    evaluator = Evaluator(model_env, truth_env, EvalConfig(num_paths=4, chunks=8))
    results = evaluator.run()          # {"summary": {"adherence/rotation_error_deg": ...}, "adherence": {...}, ...}

Every suite rolls the model and the truth out from the same rendered start pose along the
same actions (:mod:`minwm_env.eval.rollout`) and returns JSON-ready dicts: per-chunk curves
and a ``summary`` of namespaced scalars. What each number means is in :data:`DEFINITIONS`.
The model may be the ground truth itself, which must score perfectly (zero errors,
PSNR at :data:`~minwm_env.eval.metrics.PSNR_CAP_DB`, SSIM 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch

from .. import camera
from ..codec import from_uint8, to_uint8
from ..envs.world_model import WorldModelEnv
from ..pose_strings import KEY_DELTAS
from ..warp import warp_along_actions
from ..world.paths import PATH_KINDS, random_path, random_start
from . import generation, metrics, quality
from .motion import METHODS, RelativeMotion, estimate_motion, expected_flow, image_flow
from .rollout import Rollout, env_layout, paired_rollout, render_start, rollout

SUITES = ("adherence", "drift", "consistency", "controllability", "idle", "recovery", "novel_view", "revisit",
          "object_scale")

DEFINITIONS = {
    "adherence/rotation_error_deg": "median over steps of the angle between the camera rotation estimated from the "
                                    "model's frames (one step: the frame before it to its last frame) and the "
                                    "commanded one",
    "adherence/translation_direction_error_deg": "median angle between estimated and commanded translation direction "
                                                 "(steps that move the camera)",
    "adherence/failure_fraction": "fraction of steps where motion could not be estimated from the model's frames",
    "adherence/truth_*": "the same estimator on the ground truth's frames: its noise floor",
    "adherence/pose_rotation_error_deg": "median angle between the motions estimated from the model's and the "
                                         "truth's frames of the same step (0 for the truth itself)",
    "adherence/pose_translation_error_deg": "the same for translation directions",
    "adherence/psnr_db": "PSNR of the model's frames against the truth's: of the mean squared error over all frames "
                         "(100 dB = identical)",
    "adherence/ssim": "SSIM (luminance, 11x11 Gaussian window) of the model against the truth, mean over all frames",
    "adherence/baseline_*": "the same for the baseline that repeats the start frame",
    "adherence/seen_psnr_db": "PSNR (dB, higher) over the pixels of the paths' frames that the start frame showed "
                              "(truth depth decides); warp_seen_psnr_db: the same for the warp baseline",
    "adherence/new_detail_ratio": "detail on the newly revealed pixels relative to the truth's (1 = as detailed), "
                                  "mean over paths; new_fraction: the share of such pixels",
    "adherence/warp_psnr_db": "the same for a geometric baseline: the start frame reprojected into every commanded "
                              "camera through a plane at warp_baseline_depth (no model)",
    "adherence/mirrored_psnr_db": "PSNR against the same truth of the model rolled out from the same start and noise "
                                  "with every action negated (a model that uses its actions scores well below "
                                  "adherence/psnr_db)",
    "drift/psnr_db_curve": "PSNR of each step's last frame against the truth vs horizon (error averaged over paths)",
    "drift/beats_baseline_fraction": "fraction of horizons where the model's PSNR beats repeating the start frame",
    "drift/warp_psnr_db": "the drift PSNR of the warp baseline (see adherence/warp_psnr_db)",
    "drift/beats_warp_fraction": "fraction of horizons where the model's PSNR beats the warp baseline",
    "drift/detail_ratio": "detail of the model's step-end frames relative to the truth's, pooled over horizons "
                          "(1 = as detailed; < 1 blurrier; block artefacts cannot raise it; _final: the last step)",
    "drift/blockiness": "mean step across 4-px cell boundaries over that inside cells, model frames, mean over "
                        "horizons (truth_blockiness beside it; higher = more block artefacts)",
    "consistency/flicker": "mean absolute difference of consecutive frames (0..255), mean over paths",
    "consistency/flicker_ratio": "model flicker / truth flicker along the same path (1 = as much change as the truth)",
    "consistency/loop_closure_error": "mean absolute difference (0..255) between the last and the start frame of an "
                                      "out-and-back path (the truth: 0)",
    "controllability/direction_agreement": "fraction of steps of alternating commands (turn right/left, step "
                                           "right/left each step) whose median image flow points the way the command "
                                           "moves the image centre",
    "idle/final_difference": "mean absolute difference (0..255) of the last frame from the start frame after holding "
                             "the zero action (the truth: 0)",
    "idle/estimated_rotation_deg_per_step": "median camera rotation estimated per step while idle (the truth: 0)",
    "recovery/*_half_recovery_steps": "steps from the peak divergence from an undisturbed rollout (same seed and "
                                      "actions) until it falls to half; null if it never does within the run",
}
DEFINITIONS.update(generation.DEFINITIONS)


@dataclass
class EvalConfig:
    """Sizes and settings of an evaluation (the CLI's flags)."""

    num_paths: int = 4
    """camera paths for adherence, flicker and per-horizon error"""
    chunks: int = 8
    """steps (chunks) per path"""
    drift_chunks: int = 50
    """steps of the long drift rollout (hundreds for the full curve; decoding costs time every step)"""
    drift_paths: int = 1
    """paths of the drift rollout"""
    idle_chunks: int = 8
    """steps of the zero action for idle stability"""
    recovery_chunks: int = 8
    """steps of the recovery rollouts"""
    perturb_at: int = 2
    """the model's cache is perturbed before this step"""
    cache_noise: float = 1.0
    """std of the Gaussian noise added to every cached key and value, relative to their own std"""
    path_kinds: tuple[str, ...] = ("walk", "look_around", "turn", "zigzag")
    """kinds of the adherence paths, cycled"""
    drift_kind: str = "mixed"
    """kind of the drift path"""
    motion_method: str = "klt"
    """motion estimator: klt, orb or sift"""
    motion_size: int = 128
    """frames are upscaled to this width before features are detected"""
    seed: int = 0
    """seed of the paths and of the model's noise"""
    mirrored: bool = True
    """adherence also rolls each path out with its actions negated (true vs mirrored actions)"""
    warp_baseline_depth: float = 2.0
    """plane depth (world units) of the warp baseline (2: the best of 1-4 and infinity on rendered clips)"""
    novel_chunks: int = 10
    """steps of the novel-view paths (10: a 120° turn at 3° a latent frame)"""
    fd_paths: int = 96
    """short novel-view paths whose step-end frames make the Fréchet distance's sets"""
    object_paths: int = 2
    """approaches for the object-scale suite"""
    object_chunks: int = 3
    """steps of an approach (0.32 units each)"""

    def __post_init__(self):
        for name in ("num_paths", "chunks", "drift_chunks", "drift_paths", "idle_chunks", "recovery_chunks",
                     "novel_chunks", "object_paths", "object_chunks", "fd_paths"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.perturb_at < self.recovery_chunks:
            raise ValueError(f"perturb_at must be in [0, recovery_chunks={self.recovery_chunks}), "
                             f"got {self.perturb_at}")
        for kind in (*self.path_kinds, self.drift_kind):
            if kind not in PATH_KINDS:
                raise ValueError(f"unknown path kind {kind!r}; kinds: {list(PATH_KINDS)}")
        if self.motion_method not in METHODS:
            raise ValueError(f"motion_method must be one of {METHODS}, got {self.motion_method!r}")


# -- helpers --------------------------------------------------------------------------------------

def commanded_motion(actions) -> np.ndarray:
    """(chunk_frames, 6) deltas of one step → the 4×4 pose of its end in the frame of its start."""
    return camera.compose_deltas(torch.as_tensor(np.asarray(actions), dtype=torch.float64))[-1].numpy()


def describe_motion(deltas) -> str:
    """What a path of (N, 6) per-latent-frame deltas does, in words for plot labels: how far it
    walks and which way it turns and tilts in total (a path named 'walk' may mostly turn)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    distance = float(np.linalg.norm(deltas[:, :3], axis=1).sum())
    yaw, pitch = float(deltas[:, 3].sum()), float(deltas[:, 4].sum())
    turned = float(np.abs(deltas[:, 3]).sum())
    parts = [f"walks {distance:.1f} u"] if distance > 1e-6 else []
    if turned > 1e-6:
        parts.append(f"turns {'right' if yaw >= 0 else 'left'} {abs(yaw):.0f}°"
                     + (f" ({turned:.0f}° in all)" if turned - abs(yaw) > 1 else ""))
    if abs(pitch) > 1e-6:
        parts.append(f"tilts {'up' if pitch > 0 else 'down'} {abs(pitch):.0f}°")
    return ", ".join(parts) or "stands still"


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _median(values) -> float | None:
    values = np.asarray([_nan(v) for v in values], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def _mean(values) -> float | None:
    values = np.asarray([_nan(v) for v in values], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.mean(values)) if len(values) else None


def motion_errors(estimate: RelativeMotion | None, reference: np.ndarray) -> tuple[float | None, float | None]:
    """(rotation error, translation direction error) in degrees of an estimate against a 4×4
    reference motion; None where undefined (failed estimate; no reference translation)."""
    if estimate is None:
        return None, None
    rotation = float(metrics.rotation_error_deg(estimate.rotation, reference[:3, :3]))
    direction = float(metrics.translation_direction_error_deg(estimate.translation_direction, reference[:3, 3]))
    if np.linalg.norm(reference[:3, 3]) > 1e-9 and not np.any(estimate.translation_direction):
        direction = 90.0  # a move that the frames show as standing still: no information about its direction
    return rotation, None if math.isnan(direction) else direction


def follows_direction(flow: np.ndarray | None, command: np.ndarray, intrinsics, min_flow: float = 0.005) -> bool:
    """Whether the view moved the commanded way: the median image flow of the step points the
    same way (positive dot product) as the flow the command predicts at the image centre, and
    is at least ``min_flow`` of the image size (a still picture follows nothing)."""
    if flow is None or np.linalg.norm(flow) < min_flow:
        return False
    return float(flow @ expected_flow(command, intrinsics)) > 0


def recovery_time(errors, fraction: float = 0.5) -> int | None:
    """Steps from the peak of an error curve until it first falls to ``fraction`` of the peak
    (0 when the peak is 0); None when it never does within the curve."""
    errors = np.asarray(errors, dtype=np.float64)
    peak_index = int(np.argmax(errors))
    peak = errors[peak_index]
    if peak <= 0:
        return 0
    below = np.flatnonzero(errors[peak_index:] <= fraction * peak)
    return int(below[0]) if len(below) else None


def _psnr_list(a, b) -> list[float]:
    return metrics.capped(metrics.psnr(a, b)).tolist()


def _psnr_db(mse) -> list[float]:
    return metrics.capped(metrics.psnr_from_mse(mse)).tolist()


def _pooled_psnr_db(mse) -> float:
    """PSNR of the mean of squared errors (see :func:`metrics.pooled_psnr`), capped."""
    return float(metrics.capped(metrics.psnr_from_mse(np.mean(mse))))


def _perturb_cache(noise: float, seed: int):
    """A ``before_step`` hook adding Gaussian noise to every cached key and value of a world model."""
    def perturb(env: gym.Env) -> None:
        generator = env.unwrapped._world.generator
        generator.flush()  # the last step's clean write is part of the context too
        rng = torch.Generator().manual_seed(seed)
        for keys, values in generator.cache.streams.values():
            for tensor in (*keys, *values):
                scale = noise * float(tensor.float().std())
                tensor.add_((torch.randn(tensor.shape, generator=rng) * scale).to(tensor.device, tensor.dtype))
    return perturb


class Evaluator:
    """Runs the suites on ``model`` (an env with the minwm API) against ``truth`` (a
    :class:`~minwm_env.envs.ground_truth.GroundTruthEnv` with the same frame size and chunking)."""

    def __init__(self, model: gym.Env, truth: gym.Env, config: EvalConfig | None = None):
        self.model, self.truth = model, truth
        self.config = config or EvalConfig()
        self.layout = env_layout(model)
        if env_layout(truth) != self.layout:
            raise ValueError(f"the model and the truth must agree on frame size and chunking: {self.layout} vs "
                             f"{env_layout(truth)}")
        self.scene = truth.unwrapped.scene
        if self.scene is None:
            raise ValueError("the evaluator draws camera paths through a generated scene; a user MJCF truth has no "
                             "free-space map (roll out your own paths with paired_rollout)")
        self.intrinsics = np.asarray(truth.unwrapped.intrinsics, dtype=np.float64)

    # -- building blocks --------------------------------------------------------------------------
    def _path(self, kind: str, num_chunks: int, index: int):
        return random_path(self.scene, 1 + num_chunks * self.layout.chunk_frames, kind,
                           seed=self.config.seed * 1000 + index)

    def _motion(self, frames: np.ndarray) -> RelativeMotion | None:
        return estimate_motion(frames, self.intrinsics, method=self.config.motion_method, size=self.config.motion_size)

    def _step_motions(self, run: Rollout) -> list[RelativeMotion | None]:
        return [self._motion(run.step_frames(k)) for k in range(run.num_chunks)]

    def _warp_baseline(self, run: Rollout) -> np.ndarray:
        """(K·F, H, W, 3): the run's start frame reprojected into every commanded camera after it."""
        temporal_factor = self.layout.frames_per_chunk // self.layout.chunk_frames
        warped = warp_along_actions(from_uint8(torch.from_numpy(run.start)), torch.from_numpy(run.actions.reshape(-1, 6)),
                                    torch.from_numpy(self.intrinsics), temporal_factor, self.config.warp_baseline_depth)
        return to_uint8(warped[None])[0].numpy()

    def _step_flows(self, run: Rollout) -> list[np.ndarray | None]:
        return [image_flow(run.step_frames(k), size=self.config.motion_size) for k in range(run.num_chunks)]

    # -- suites -----------------------------------------------------------------------------------
    def adherence(self) -> dict:
        """Action adherence, per-frame PSNR/SSIM and flicker along ``num_paths`` paths."""
        config, paths = self.config, []
        for i in range(config.num_paths):
            kind = config.path_kinds[i % len(config.path_kinds)]
            path = self._path(kind, config.chunks, i)
            model_run, truth_run = paired_rollout(self.model, self.truth, path, seed=config.seed + i)
            model_motion, truth_motion = self._step_motions(model_run), self._step_motions(truth_run)
            record = {"kind": kind, "pose_string": path.pose_string, "label": describe_motion(path.deltas.numpy()),
                      "rotation_error_deg": [],
                      "translation_direction_error_deg": [], "truth_rotation_error_deg": [],
                      "truth_translation_direction_error_deg": [], "pose_rotation_error_deg": [],
                      "pose_translation_error_deg": [], "failures": 0, "truth_failures": 0}
            for k in range(model_run.num_chunks):
                command = commanded_motion(model_run.actions[k])
                rotation, direction = motion_errors(model_motion[k], command)
                truth_rotation, truth_direction = motion_errors(truth_motion[k], command)
                record["rotation_error_deg"].append(rotation)
                record["translation_direction_error_deg"].append(direction)
                record["truth_rotation_error_deg"].append(truth_rotation)
                record["truth_translation_direction_error_deg"].append(truth_direction)
                record["failures"] += model_motion[k] is None
                record["truth_failures"] += truth_motion[k] is None
                pose_rotation = pose_direction = None
                if model_motion[k] is not None and truth_motion[k] is not None:
                    truth_pose = np.eye(4)
                    truth_pose[:3, :3] = truth_motion[k].rotation
                    truth_pose[:3, 3] = truth_motion[k].translation_direction
                    pose_rotation, pose_direction = motion_errors(model_motion[k], truth_pose)
                record["pose_rotation_error_deg"].append(pose_rotation)
                record["pose_translation_error_deg"].append(pose_direction)
            model_frames, truth_frames = model_run.all_frames(), truth_run.all_frames()
            per_step = self.layout.frames_per_chunk
            mse = metrics.mse(model_frames[1:], truth_frames[1:]).reshape(-1, per_step).mean(1)
            if config.mirrored:
                # The same start and noise seed with every action negated, scored against the true
                # path's truth: a model that uses its actions is clearly further from the truth.
                mirrored_run = rollout(self.model, -model_run.actions, path.start_c2w, truth_run.start,
                                       seed=config.seed + i)
                mirrored_mse = metrics.mse(mirrored_run.all_frames()[1:], truth_frames[1:]).reshape(-1, per_step).mean(1)
                record.update(mirrored_mse=mirrored_mse.tolist(), mirrored_psnr_db=_psnr_db(mirrored_mse))
            baseline_mse = metrics.mse(truth_frames[:1], truth_frames[1:]).reshape(-1, per_step).mean(1)
            warp = self._warp_baseline(model_run)
            warp_mse = metrics.mse(warp, truth_frames[1:]).reshape(-1, per_step).mean(1)
            # pixels the start frame showed and pixels it did not, scored apart
            poses = generation.frame_world_poses(path, per_step // self.layout.chunk_frames)
            seen, parts = generation.seen_and_new(self, poses, truth_frames[1:],
                                                  {"model": model_frames[1:], "warp": warp})
            record.update(new_fraction=float((~seen).mean()), seen_mse=parts["model"]["seen_mse"],
                          warp_seen_mse=parts["warp"]["seen_mse"], new_detail_ratio=parts["model"]["new_detail_ratio"],
                          warp_new_detail_ratio=parts["warp"]["new_detail_ratio"])
            record.update(warp_mse=warp_mse.tolist(), warp_psnr_db=_psnr_db(warp_mse))
            record.update(
                mse=mse.tolist(), baseline_mse=baseline_mse.tolist(), psnr_db=_psnr_db(mse),
                baseline_psnr_db=_psnr_db(baseline_mse),
                ssim=metrics.ssim(model_frames[1:], truth_frames[1:]).reshape(-1, per_step).mean(1).tolist(),
                baseline_ssim=metrics.ssim(truth_frames[:1], truth_frames[1:]).reshape(-1, per_step).mean(1).tolist(),
                flicker=metrics.flicker(model_frames), truth_flicker=metrics.flicker(truth_frames),
                flicker_ratio=metrics.flicker_ratio(model_frames, truth_frames),
                latency_s=float(np.mean(model_run.latency_s)))
            paths.append(record)

        def pooled(key):
            return [v for p in paths for v in p[key]]

        num_steps = sum(len(p["rotation_error_deg"]) for p in paths)
        summary = {
            "adherence/rotation_error_deg": _median(pooled("rotation_error_deg")),
            "adherence/translation_direction_error_deg": _median(pooled("translation_direction_error_deg")),
            "adherence/failure_fraction": sum(p["failures"] for p in paths) / num_steps,
            "adherence/truth_rotation_error_deg": _median(pooled("truth_rotation_error_deg")),
            "adherence/truth_translation_direction_error_deg": _median(pooled("truth_translation_direction_error_deg")),
            "adherence/truth_failure_fraction": sum(p["truth_failures"] for p in paths) / num_steps,
            "adherence/pose_rotation_error_deg": _median(pooled("pose_rotation_error_deg")),
            "adherence/pose_translation_error_deg": _median(pooled("pose_translation_error_deg")),
            "adherence/psnr_db": _pooled_psnr_db(pooled("mse")), "adherence/ssim": _mean(pooled("ssim")),
            "adherence/baseline_psnr_db": _pooled_psnr_db(pooled("baseline_mse")),
            "adherence/baseline_ssim": _mean(pooled("baseline_ssim")),
            "adherence/mirrored_psnr_db": _pooled_psnr_db(pooled("mirrored_mse")) if config.mirrored else None,
            "adherence/warp_psnr_db": _pooled_psnr_db(pooled("warp_mse")),
            "adherence/new_fraction": _mean([p["new_fraction"] for p in paths]),
            "adherence/seen_psnr_db": _pooled_psnr_db([p["seen_mse"] for p in paths if p["seen_mse"] is not None]),
            "adherence/warp_seen_psnr_db": _pooled_psnr_db([p["warp_seen_mse"] for p in paths
                                                           if p["warp_seen_mse"] is not None]),
            "adherence/new_detail_ratio": _mean([p["new_detail_ratio"] for p in paths]),
            "adherence/warp_new_detail_ratio": _mean([p["warp_new_detail_ratio"] for p in paths]),
            "consistency/flicker": _mean([p["flicker"] for p in paths]),
            "consistency/truth_flicker": _mean([p["truth_flicker"] for p in paths]),
            "consistency/flicker_ratio": _mean([p["flicker_ratio"] for p in paths]),
        }
        return {"paths": paths, "summary": summary}

    def drift(self) -> dict:
        """Error against horizon along ``drift_paths`` long paths, with the repeat-start-frame baseline."""
        config = self.config
        mse, ssim, baseline_mse, baseline_ssim, warp_mse, strings = [], [], [], [], [], []
        model_last, truth_last = [], []  # (paths, K, H, W, 3): detail and block artefacts per horizon
        for i in range(config.drift_paths):
            path = self._path(config.drift_kind, config.drift_chunks, 500 + i)
            model_run, truth_run = paired_rollout(self.model, self.truth, path, seed=config.seed + 500 + i, keep="last")
            model_frames, truth_frames = model_run.last_frames()[1:], truth_run.last_frames()
            mse.append(metrics.mse(model_frames, truth_frames[1:]))
            ssim.append(metrics.ssim(model_frames, truth_frames[1:]))
            baseline_mse.append(metrics.mse(truth_frames[:1], truth_frames[1:]))
            baseline_ssim.append(metrics.ssim(truth_frames[:1], truth_frames[1:]))
            per_step = self.layout.frames_per_chunk
            warp_mse.append(metrics.mse(self._warp_baseline(model_run)[per_step - 1::per_step], truth_frames[1:]))
            strings.append(path.pose_string)
            model_last.append(model_frames)
            truth_last.append(truth_frames[1:])
        mse, baseline_mse = np.mean(mse, axis=0), np.mean(baseline_mse, axis=0)  # (K,) over paths
        warp_mse = np.mean(warp_mse, axis=0)
        ssim, baseline_ssim = np.mean(ssim, axis=0), np.mean(baseline_ssim, axis=0)
        model_last, truth_last = np.stack(model_last, 1), np.stack(truth_last, 1)  # (K, paths, H, W, 3)
        detail = [_finite(quality.pooled_detail_ratio(m, t)) for m, t in zip(model_last, truth_last)]
        blocks = [_mean(quality.blockiness(m)) for m in model_last]
        truth_blocks = [_mean(quality.blockiness(t)) for t in truth_last]
        summary = {
            "drift/num_steps": config.drift_chunks,
            "drift/detail_ratio": _finite(quality.pooled_detail_ratio(model_last.reshape(-1, *model_last.shape[2:]),
                                                                      truth_last.reshape(-1, *truth_last.shape[2:]))),
            "drift/detail_ratio_final": detail[-1],
            "drift/blockiness": _mean(blocks), "drift/truth_blockiness": _mean(truth_blocks),
            "drift/psnr_db": _pooled_psnr_db(mse), "drift/psnr_db_final": _psnr_db(mse[-1:])[0],
            "drift/ssim": float(ssim.mean()), "drift/ssim_final": float(ssim[-1]),
            "drift/baseline_psnr_db": _pooled_psnr_db(baseline_mse), "drift/baseline_ssim": float(baseline_ssim.mean()),
            "drift/beats_baseline_fraction": float(np.mean(mse < baseline_mse)),
            "drift/warp_psnr_db": _pooled_psnr_db(warp_mse), "drift/beats_warp_fraction": float(np.mean(mse < warp_mse)),
        }
        return {"pose_strings": strings, "psnr_db_curve": _psnr_db(mse), "ssim_curve": ssim.tolist(),
                "baseline_psnr_db_curve": _psnr_db(baseline_mse), "baseline_ssim_curve": baseline_ssim.tolist(),
                "warp_psnr_db_curve": _psnr_db(warp_mse), "detail_ratio_curve": detail, "blockiness_curve": blocks,
                "truth_blockiness_curve": truth_blocks, "summary": summary}

    def consistency(self) -> dict:
        """Loop closure along out-and-back paths (flicker comes with :meth:`adherence`)."""
        config, loops = self.config, []
        for i in range(max(1, config.num_paths // 2)):
            path = self._path("out_and_back", config.chunks, 200 + i)
            model_run, truth_run = paired_rollout(self.model, self.truth, path, seed=config.seed + 200 + i, keep="last")
            model_frames, truth_frames = model_run.last_frames(), truth_run.last_frames()
            loops.append({"pose_string": path.pose_string,
                          "loop_closure_error": metrics.loop_closure_error(model_frames),
                          "truth_loop_closure_error": metrics.loop_closure_error(truth_frames),
                          "loop_mse": float(metrics.mse(model_frames[0], model_frames[-1])[0])})
        summary = {"consistency/loop_closure_error": _mean([r["loop_closure_error"] for r in loops]),
                   "consistency/truth_loop_closure_error": _mean([r["truth_loop_closure_error"] for r in loops]),
                   "consistency/loop_psnr_db": _pooled_psnr_db([r["loop_mse"] for r in loops])}
        return {"loops": loops, "summary": summary}

    def controllability(self) -> dict:
        """Alternating commands, each held for one step: turn right/left, then step right/left."""
        config, records = self.config, []
        start_pose = random_start(self.scene, _Seeded(config.seed * 1000 + 300))
        chunk = self.layout.chunk_frames
        for name, (first, second) in {"turn": ("l", "j"), "strafe": ("d", "a")}.items():
            deltas = np.concatenate([np.repeat([KEY_DELTAS[first]], chunk, 0),
                                     np.repeat([KEY_DELTAS[second]], chunk, 0)])
            deltas = np.tile(deltas, (math.ceil(config.chunks / 2), 1))[: config.chunks * chunk]
            model_run, truth_run = paired_rollout(self.model, self.truth, deltas, start_pose=start_pose,
                                                  seed=config.seed + 300)
            model_motion, truth_motion = self._step_motions(model_run), self._step_motions(truth_run)
            commands = [commanded_motion(a) for a in model_run.actions]
            model_flow, truth_flow = self._step_flows(model_run), self._step_flows(truth_run)
            mse = metrics.mse(model_run.last_frames()[1:], truth_run.last_frames()[1:])
            records.append({
                "pattern": f"{first}*{chunk},{second}*{chunk} repeated",
                "follows": [follows_direction(f, c, self.intrinsics) for f, c in zip(model_flow, commands)],
                "truth_follows": [follows_direction(f, c, self.intrinsics) for f, c in zip(truth_flow, commands)],
                "estimated_yaw_deg": [_yaw_deg(m) for m in model_motion],
                "truth_estimated_yaw_deg": [_yaw_deg(m) for m in truth_motion],
                "commanded_yaw_deg": [float(camera.matrix_to_delta(torch.as_tensor(c))[3]) for c in commands],
                "rotation_error_deg": [motion_errors(m, c)[0] for m, c in zip(model_motion, commands)],
                "mse": mse.tolist(), "psnr_db": _psnr_db(mse)})
        summary = {
            "controllability/direction_agreement": _mean([f for r in records for f in r["follows"]]),
            "controllability/truth_direction_agreement": _mean([f for r in records for f in r["truth_follows"]]),
            "controllability/rotation_error_deg": _median([e for r in records for e in r["rotation_error_deg"]]),
            "controllability/psnr_db": _pooled_psnr_db([m for r in records for m in r["mse"]])}
        return {"patterns": records, "summary": summary}

    def idle(self) -> dict:
        """The zero action held for ``idle_chunks`` steps: the scene must not drift (the truth stays exactly put)."""
        config = self.config
        start_pose = random_start(self.scene, _Seeded(config.seed * 1000 + 400))
        actions = np.zeros((config.idle_chunks, self.layout.chunk_frames, 6), np.float32)
        start = render_start(self.truth, start_pose)
        run = rollout(self.model, actions, start_pose, start, seed=config.seed + 400)
        frames = run.last_frames()
        difference = metrics.mean_abs_difference(frames[:1], frames[1:])
        rotations = [None if m is None else float(metrics.rotation_angle_deg(m.rotation))
                     for m in self._step_motions(run)]
        summary = {"idle/final_difference": float(difference[-1]), "idle/max_difference": float(difference.max()),
                   "idle/psnr_db_final": _psnr_db(metrics.mse(frames[0], frames[-1]))[0],
                   "idle/flicker": metrics.flicker(run.all_frames()),
                   "idle/estimated_rotation_deg_per_step": _median(rotations)}
        return {"difference_curve": difference.tolist(), "estimated_rotation_deg": rotations, "summary": summary}

    def recovery(self) -> dict:
        """Unusual starts (inverted colours, noise) and a perturbed cache, against an undisturbed
        rollout with the same seed and actions; a world model only (the truth has neither)."""
        if not isinstance(self.model.unwrapped, WorldModelEnv):
            return {"skipped": "recovery needs a world model: the ground truth takes no start image and has no cache",
                    "summary": {}}
        config = self.config
        path = self._path("walk", config.recovery_chunks, 600)
        seed = config.seed + 600
        clean, truth_run = paired_rollout(self.model, self.truth, path, seed=seed, keep="last")
        clean_frames, truth_frames = clean.last_frames(), truth_run.last_frames()
        rng = np.random.default_rng(config.seed)
        starts = {"inverted": 255 - truth_frames[0],
                  "noise": rng.integers(0, 256, truth_frames[0].shape, dtype=np.uint8)}
        result, summary = {}, {}
        for name, image in starts.items():
            run, _ = paired_rollout(self.model, self.truth, path, seed=seed, keep="last", start_image=image)
            frames = run.last_frames()  # frames[0] is the unusual start image itself
            divergence = metrics.mean_abs_difference(frames, clean_frames)
            result[f"ood_{name}"] = {"divergence_curve": divergence.tolist(),
                                     "psnr_db_curve": _psnr_list(frames[1:], truth_frames[1:])}
            summary[f"recovery/ood_{name}_half_recovery_steps"] = recovery_time(divergence)
            summary[f"recovery/ood_{name}_final_over_start"] = float(divergence[-1] / max(divergence[0], 1e-12))
        hook = _perturb_cache(config.cache_noise, config.seed)
        run, _ = paired_rollout(self.model, self.truth, path, seed=seed, keep="last",
                                before_step=lambda k, env: hook(env) if k == config.perturb_at else None)
        divergence = metrics.mean_abs_difference(run.last_frames()[1:], clean_frames[1:])
        after = divergence[config.perturb_at:]
        result["cache"] = {"perturb_at": config.perturb_at, "divergence_curve": divergence.tolist(),
                           "psnr_db_curve": _psnr_list(run.last_frames()[1:], truth_frames[1:]),
                           "clean_psnr_db_curve": _psnr_list(clean_frames[1:], truth_frames[1:])}
        summary.update({"recovery/cache_divergence_before": float(divergence[:config.perturb_at].max(initial=0.0)),
                        "recovery/cache_peak_divergence": float(after.max()),
                        "recovery/cache_half_recovery_steps": recovery_time(after),
                        "recovery/cache_final_over_peak": float(after[-1] / after.max()) if after.max() > 0 else 0.0})
        result["clean_psnr_db_curve"] = _psnr_list(clean_frames[1:], truth_frames[1:])
        return {**result, "summary": summary}

    def novel_view(self) -> dict:
        """New content by plausibility, seen content by PSNR (:mod:`minwm_env.eval.generation`)."""
        return generation.novel_view(self)

    def revisit(self) -> dict:
        """Frames at revisited poses against the truth (:mod:`minwm_env.eval.generation`)."""
        return generation.revisit(self)

    def object_scale(self) -> dict:
        """Apparent size of approached objects (:mod:`minwm_env.eval.generation`)."""
        return generation.object_scale(self)

    def run(self, suites: tuple[str, ...] = SUITES, on_suite=None) -> dict:
        """Run ``suites`` in order (``on_suite(name)`` is called before each); results by suite
        name, plus ``config`` and the merged ``summary``."""
        unknown = sorted(set(suites) - set(SUITES))
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; suites: {list(SUITES)}")
        results: dict = {"config": asdict(self.config), "summary": {}}
        for name in suites:
            if on_suite is not None:
                on_suite(name)
            began = time.perf_counter()
            results[name] = getattr(self, name)()
            results["summary"].update(results[name]["summary"])
            results["summary"][f"time/{name}_s"] = time.perf_counter() - began
        return results


def _yaw_deg(motion: RelativeMotion | None) -> float | None:
    """The yaw (turn right) of an estimated rotation, in degrees."""
    if motion is None:
        return None
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = torch.as_tensor(motion.rotation)
    return float(camera.matrix_to_delta(pose)[3])


class _Seeded:
    """``random.Random``-like ``uniform`` from a seed (for ``random_start``)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))


__all__ = ["DEFINITIONS", "EvalConfig", "Evaluator", "SUITES", "commanded_motion", "follows_direction",
           "motion_errors", "recovery_time"]
