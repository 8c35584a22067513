"""The suites that a blur cannot win: new content, revisits and object scale (docs/design.md §8).

    results = Evaluator(model_env, truth_env, config).run(("novel_view", "revisit", "object_scale"))

PSNR rewards a smeared mean frame, so these suites score what a world model must do beyond
geometry, each against the free baselines rolled along the same path:

- ``novel_view``: turns of 120°, walks and strafes around an object reveal what the start
  frame never showed. Seen and new pixels are scored apart (the truth's depth gives the exact
  visibility of each pixel in the start frame, :func:`~minwm_env.eval.quality.seen_mask`):
  PSNR/SSIM on what was seen; on what is new only plausibility counts (detail, block
  artefacts, and whether the evaluation encoder's segmentation of each frame sits where the
  camera's horizon says floor and sky must be, beside the truth's and a blurred truth's).
- ``revisit``: trajectories that return to earlier poses, after HY-WorldPlay's protocol adapted
  to our world: short (4 steps, 65 frames) and long (16 steps, 257 frames) look-away-and-back
  and out-and-back paths; PSNR, SSIM and detail on the frames of the way back (each at a pose
  the way out visited), and the camera path estimated from the frames against the commanded
  one (R_dist, T_dist).
- ``object_scale``: walking straight at an object, the area the model draws it with over the
  truth's (the truth's segmentation; the model's by colour, :func:`quality.object_area_ratio`).

Baselines in every suite: repeating the start frame, the network-free warp of the start frame
along the command, that warp blurred by the Gaussian that maximises its PSNR (blur's PSNR
advantage made visible), and the model itself under the negated actions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import camera
from ..world.paths import CameraPath, random_start, rgb_frame_poses
from ..world.renderer import LABELS, look_pose
from . import features, metrics, quality
from . import evaluator as _evaluator  # motion_errors, commanded_motion (used at call time: no cycle)
from .rollout import Rollout, paired_rollout, rollout

# The suites' own keys: unit and direction are in DEFINITIONS, which evaluator.py merges.
DEFINITIONS = {
    "novel_view/seen_psnr_db": "PSNR (dB, higher is better) over the pixels of frames after the start that the start "
                               "frame showed (truth depth decides visibility)",
    "novel_view/seen_ssim": "SSIM (higher is better) over the windows centred on seen pixels",
    "novel_view/new_detail_ratio": "detail of the model where the truth shows new content, relative to the truth's "
                                   "(1 = as detailed; < 1 blurrier; block artefacts cannot raise it)",
    "novel_view/blockiness": "mean step across 4-px cell boundaries over the mean step inside cells, model frames "
                             "(the truth's own value beside it; higher = more block artefacts)",
    "novel_view/far_plausible_fraction": "fraction of the farthest band's frames whose layout, as the evaluation "
                                         "encoder segments them, is plausible for the camera: no floor above the "
                                         "horizon, no sky below it (higher is better; the truth: about 1)",
    "novel_view/far_fd": "Fréchet distance (lower is better) in the evaluation encoder's feature space between the "
                         "model's frames and the truth's, last frames of the steps of the farthest band over fd_paths "
                         "short paths; beside it far_fd_floor (the truth on other paths: what an independent perfect "
                         "model scores) and far_fd_blurred_truth (the truth blurred 1.5 px: what blur scores)",
    "novel_view/new_fraction": "fraction of pixels after the start that show content the start frame did not",
    "revisit/psnr_db": "PSNR (dB, higher is better) of the frames on the way back, each at a pose visited on the way "
                       "out, against the truth",
    "revisit/seen_psnr_db": "PSNR (dB, higher is better) on the way back over the pixels the start frame showed "
                            "(truth depth), the places the model was given: the truth of the rest was never shown, "
                            "so any plausible drawing of it differs from the truth",
    "revisit/self_psnr_db": "PSNR (dB, higher is better) of each frame on the way back against the model's own frame "
                            "at the same pose on the way out: does it keep what it drew (a deterministic function of "
                            "the pose, e.g. the warp of the start, scores infinite here: read it beside psnr_db)",
    "revisit/ssim": "SSIM (higher is better) of the frames on the way back",
    "revisit/detail_ratio": "detail of the frames on the way back relative to the truth's (1 = as detailed)",
    "revisit/r_dist": "mean angle (radians, lower is better) between the per-step camera rotations estimated from "
                      "the frames and the commanded ones (HY-WorldPlay's R_dist, on relative motions)",
    "revisit/t_dist": "mean distance (0..2, lower is better) between the per-step unit translation directions "
                      "estimated from the frames and the commanded ones, on steps that move (T_dist)",
    "revisit/truth_r_dist": "the same from the truth's own frames: the motion estimator's floor, what a perfect "
                            "model scores (a model's frames can land below it by chance: the estimator's errors "
                            "depend on the picture; python -m minwm_env.eval.motion_floor measures them per motion)",
    "revisit/look_r_dist": "R_dist on the look-away-and-back paths alone (walk_r_dist: the walks); the truth's "
                           "floor on room/100 (means over 16 path seeds): 0.01 rad on looks, 0.11 (65 frames) and "
                           "0.04 (257 frames) on walks, up to 0.4 on a single walk (forward motion is the estimator's "
                           "limit at 64x64, minwm_env.eval.motion)",
    "revisit/motion_failures": "fraction of steps whose motion could not be estimated from the frames (blank views, "
                               "too few tracks): left out of R_dist and T_dist",
    "object_scale/area_ratio": "area the model draws an approached object with over the truth's (1 = true size; "
                               "< 1 too small), median over steps and paths",
    "*/warp_*": "the same for the start frame reprojected along the command (no model)",
    "*/blurred_warp_*": "the same for that warp blurred by the Gaussian that maximises its PSNR (sigma in "
                        "*/blurred_warp_sigma)",
    "*/baseline_*": "the same for repeating the start frame",
    "*/mirrored_*": "the same for the model under the negated actions",
}

NOVEL_KINDS = ("turn_120", "walk", "orbit")
BAND_MIN_FRAMES = 96  # frames a horizon band holds at least
FD_SHRINKAGE = 0.1  # for a band of fewer frames than features (small test runs only; noted in the band)
REVISIT_KINDS = {"short": 4, "long": 16}  # steps of one chunk: 1 + 16·4 = 65 and 1 + 16·16 = 257 frames


# -- paths ---------------------------------------------------------------------------------------

def _deltas(*parts: tuple[tuple[float, ...], int]) -> torch.Tensor:
    rows = [torch.tensor(delta, dtype=torch.float64).expand(count, 6) for delta, count in parts]
    return torch.cat(rows)


class _Uniform:
    """``random.Random``-like ``uniform`` over a numpy generator (for ``random_start``)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))


def _free_along(scene, start: np.ndarray, deltas: torch.Tensor, margin: float = 0.3) -> bool:
    poses = start @ camera.compose_deltas(deltas).numpy()
    return all(scene.is_free(p[0, 3], p[1, 3], margin) for p in poses)


def novel_view_path(scene, kind: str, num_latent: int, seed: int) -> CameraPath:
    """A path that reveals what its start frame does not show: ``turn_120`` (3° a latent frame
    to one side, 120° over 40 latent frames), ``walk`` (straight ahead from a start with room in
    front), ``orbit`` (strafe sideways around the nearest object while turning to keep it in view)."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        start = random_start(scene, _Uniform(rng))
        if kind == "turn_120":
            side = 1.0 if rng.uniform() < 0.5 else -1.0
            deltas = _deltas(((0, 0, 0, 3.0 * side, 0, 0), num_latent))
        elif kind == "walk":
            deltas = _deltas(((0, 0, 0.08, 0, 0, 0), num_latent))
        elif kind == "orbit":
            if not scene.obstacles:
                raise ValueError(f"scene {scene.name} has no object to orbit")
            position = start[:3, 3]
            target = min(scene.obstacles, key=lambda o: math.hypot(o.x - position[0], o.y - position[1]))
            radius = math.hypot(target.x - position[0], target.y - position[1])
            if not 0.8 < radius < 2.0:
                continue
            yaw = math.degrees(math.atan2(target.y - position[1], target.x - position[0]))
            start = look_pose(position[0], position[1], scene.camera_height, yaw)
            side = 1.0 if rng.uniform() < 0.5 else -1.0
            # strafing 0.08 sideways at distance r turns the bearing by 0.08 / r radians
            deltas = _deltas(((0.08 * side, 0, 0, -side * math.degrees(0.08 / radius), 0, 0), num_latent))
        else:
            raise ValueError(f"unknown novel-view kind {kind!r}; kinds: {list(NOVEL_KINDS)}")
        if _free_along(scene, start, deltas):
            return CameraPath(kind, start, deltas, kind)
    raise RuntimeError(f"no free {kind} path of {num_latent} latent frames in scene {scene.name}")


def revisit_path(scene, length: str, kind: str, chunk_frames: int, seed: int) -> CameraPath:
    """Out and back along the same poses: ``look`` (turn away, then back) or ``walk`` (forward,
    then backward), half the steps each way, so frame j of the way back is at the pose of the
    mirrored frame of the way out."""
    steps = REVISIT_KINDS[length]
    half = steps * chunk_frames // 2
    rng = np.random.default_rng(seed)
    for _ in range(500):
        start = random_start(scene, _Uniform(rng))
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        if kind == "look":
            out = (0, 0, 0, 3.0 * side, 0, 0)
        elif kind == "walk":
            out = (0, 0, 0.08 if length == "short" else 0.04, 0, 0, 0)
        else:
            raise ValueError(f"unknown revisit kind {kind!r}; kinds: look, walk")
        back = tuple(-v for v in out)
        deltas = _deltas((out, half), (back, half))
        if _free_along(scene, start, deltas):
            return CameraPath(f"{length}_{kind}", start, deltas, f"{length} {kind} out and back")
    raise RuntimeError(f"no free {length} {kind} revisit path in scene {scene.name}")


def approach_path(scene, num_latent: int, seed: int, stop_distance: float = 0.45):
    """A straight walk at an object from about 2 units away, facing its centre, stopping
    ``stop_distance`` short of its surface → (path, the object's geom name)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scene.obstacles))
    for index in order:
        target = scene.obstacles[index]
        size = target.radius if target.radius is not None else max(target.half_x, target.half_y)
        for _ in range(50):
            angle = rng.uniform(0, 2 * math.pi)
            distance = size + stop_distance + 0.08 * num_latent
            x, y = target.x + distance * math.cos(angle), target.y + distance * math.sin(angle)
            start = look_pose(x, y, scene.camera_height, math.degrees(angle + math.pi))
            deltas = _deltas(((0, 0, 0.08, 0, 0, 0), num_latent))
            poses = start @ camera.compose_deltas(deltas).numpy()
            others = [o for o in scene.obstacles if o is not target]
            clear = all(scene.half_extent - max(abs(p[0, 3]), abs(p[1, 3])) > 0.3 for p in poses) and all(
                o.distance(p[0, 3], p[1, 3]) > 0.3 for o in others for p in poses)
            if clear:
                return CameraPath("approach", start, deltas, "approach"), f"obj{index}"
    raise RuntimeError(f"no clear approach to an object in scene {scene.name}")


# -- scoring helpers -------------------------------------------------------------------------------

def frame_world_poses(path: CameraPath, temporal_factor: int) -> np.ndarray:
    """(1 + N·factor, 4, 4) world c2w of every RGB frame, interpolated as the world renders them."""
    return path.start_c2w @ rgb_frame_poses(path.relative_c2w(), temporal_factor).numpy()


def _psnr_db(mse) -> float:
    mse = np.asarray(mse, dtype=np.float64)
    mse = mse[np.isfinite(mse)]
    return float(metrics.capped(metrics.psnr_from_mse(np.mean(mse)))) if len(mse) else None


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite entries; NaN for a row with none (a frame all new)."""
    finite = np.isfinite(values)
    return np.where(finite.any(1), np.where(finite, values, 0).sum(1) / np.maximum(finite.sum(1), 1), np.nan)


def _nanmean(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def _candidates(evaluator, model_run: Rollout, truth_run: Rollout, path, seed: int):
    """Every frame after the start, (N, H, W, 3), of the model and of each baseline, and the
    blurred warp's sigma."""
    truth = truth_run.all_frames()[1:]
    warp = evaluator._warp_baseline(model_run)
    blurred = quality.best_blur(warp, truth)
    out = {"model": model_run.all_frames()[1:], "baseline": np.repeat(truth_run.start[None], len(truth), axis=0),
           "warp": warp, "blurred_warp": blurred.frames}
    if evaluator.config.mirrored:
        mirrored = rollout(evaluator.model, -model_run.actions, path.start_c2w, truth_run.start, seed=seed)
        out["mirrored"] = mirrored.all_frames()[1:]
    return out, blurred.sigma


# -- suites ----------------------------------------------------------------------------------------

def seen_and_new(evaluator, poses: np.ndarray, truth: np.ndarray, frames: dict[str, np.ndarray]):
    """Score ``frames[name]`` (N, H, W, 3) against ``truth`` apart on the pixels the start frame
    showed and on the newly revealed ones; ``poses`` (1 + N, 4, 4) world c2w of the start and of
    every frame. Returns the seen mask (N, H, W) and per candidate: PSNR per step and pooled
    MSE, SSIM on seen pixels, detail on new pixels (per step and pooled) and blockiness."""
    renderer = evaluator.truth.unwrapped.renderer
    per_step = evaluator.layout.frames_per_chunk
    num_steps = len(truth) // per_step
    depth = np.stack([renderer.render_depth(p) for p in poses])
    seen = quality.seen_mask(poses[0], depth[0], poses[1:], evaluator.intrinsics, depth[1:])
    new = ~seen
    steps = [slice(k * per_step, (k + 1) * per_step) for k in range(num_steps)]
    scores = {}
    for name, candidate in frames.items():
        seen_err = np.where(seen[..., None], (candidate.astype(np.float64) - truth) ** 2, np.nan)
        seen_mse = _row_nanmean(seen_err.reshape(len(truth), -1))
        scores[name] = {
            "seen_psnr_db_curve": [_psnr_db(seen_mse[k]) for k in steps],
            "seen_mse": _nanmean(seen_mse),
            "seen_ssim": _nanmean(quality.masked_ssim(candidate, truth, seen)),
            "new_detail_ratio": _finite(quality.masked_detail_ratio(candidate, truth, new)),
            "new_detail_ratio_curve": [_finite(quality.masked_detail_ratio(candidate[k], truth[k], new[k]))
                                       for k in steps],
            "blockiness": _nanmean(quality.blockiness(candidate)),
        }
    return seen, scores


def novel_view(evaluator) -> dict:
    """Seen content by PSNR/SSIM, new content by detail, blockiness and plausibility."""
    config, layout = evaluator.config, evaluator.layout
    temporal_factor = layout.frames_per_chunk // layout.chunk_frames
    num_latent = config.novel_chunks * layout.chunk_frames
    paths, pooled, by_step, step_poses = [], {}, {}, []
    for i, kind in enumerate(NOVEL_KINDS):
        path = novel_view_path(evaluator.scene, kind, num_latent, seed=config.seed * 1000 + 700 + i)
        model_run, truth_run = paired_rollout(evaluator.model, evaluator.truth, path, seed=config.seed + 700 + i)
        poses = frame_world_poses(path, temporal_factor)
        truth = truth_run.all_frames()[1:]
        frames, sigma = _candidates(evaluator, model_run, truth_run, path, config.seed + 700 + i)
        seen, scores = seen_and_new(evaluator, poses, truth, frames)
        record = {"kind": kind, "label": _NOVEL_LABELS[kind], "new_fraction_curve": (~seen).mean((1, 2)).tolist(),
                  "blurred_warp_sigma": sigma, **scores}
        per_step = layout.frames_per_chunk
        for name, candidate in frames.items():
            pooled.setdefault(name, []).append(record[name])
            by_step.setdefault(name, []).append(candidate.reshape(model_run.num_chunks, per_step, *truth.shape[1:]))
        by_step.setdefault("truth", []).append(truth.reshape(model_run.num_chunks, per_step, *truth.shape[1:]))
        step_poses.append(poses[1:].reshape(model_run.num_chunks, per_step, 4, 4))
        record["truth_blockiness"] = _nanmean(quality.blockiness(truth))
        paths.append(record)
    summary = {"novel_view/new_fraction": float(np.mean([np.mean(p["new_fraction_curve"]) for p in paths])),
               "novel_view/truth_blockiness": float(np.mean([p["truth_blockiness"] for p in paths]))}
    for name, records in pooled.items():
        prefix = "novel_view/" if name == "model" else f"novel_view/{name}_"
        summary[prefix + "seen_psnr_db"] = _psnr_db([r["seen_mse"] for r in records])
        summary[prefix + "seen_ssim"] = _nanmean([r["seen_ssim"] for r in records])
        summary[prefix + "new_detail_ratio"] = _nanmean([r["new_detail_ratio"] for r in records
                                                         if r["new_detail_ratio"] is not None])
        summary[prefix + "blockiness"] = _nanmean([r["blockiness"] for r in records])
    bands = plausibility_by_band(evaluator, {k: np.stack(v, 1) for k, v in by_step.items()}, np.stack(step_poses, 1))
    for name, value in bands["summary"].items():
        summary[f"novel_view/{name}"] = value
    distances = frechet_by_band(evaluator)
    for name, value in distances["summary"].items():
        summary[f"novel_view/{name}"] = value
    return {"paths": paths, "bands": bands["bands"], "fd_bands": distances["bands"], "summary": summary}


def _last_frames_of_steps(frames: np.ndarray, per_step: int) -> np.ndarray:
    return frames[per_step - 1::per_step]


def frechet_by_band(evaluator) -> dict:
    """Fréchet distance to the truth in the evaluation encoder's feature space, per horizon band.

    A distance between distributions needs many independent frames, which a few long paths do
    not give (measured: on three paths a blurred truth scored closer than the truth on other
    paths). So ``fd_paths`` short novel-view paths from random starts (turns and walks, the
    last frame of each step) make the sets; per band, against the truth of the same paths:
    the model, the baselines, and two reference points from the same run, the truth on
    ``fd_paths`` other paths of the layout (``fd_floor``: what a perfect but independent model
    scores) and the truth blurred by 1.5 px (``fd_blurred_truth``: what blur scores)."""
    config, layout = evaluator.config, evaluator.layout
    per_step = layout.frames_per_chunk
    num_latent = config.novel_chunks * layout.chunk_frames
    sets: dict[str, list[np.ndarray]] = {}
    for i in range(config.fd_paths):
        kind = ("turn_120", "walk")[i % 2]
        path = novel_view_path(evaluator.scene, kind, num_latent, seed=config.seed * 100000 + 3000 + i)
        model_run, truth_run = paired_rollout(evaluator.model, evaluator.truth, path, seed=config.seed + 3000 + i)
        truth = truth_run.all_frames()[1:]
        warp = evaluator._warp_baseline(model_run)
        other = novel_view_path(evaluator.scene, kind, num_latent, seed=config.seed * 100000 + 60000 + i)
        _, other_run = paired_rollout(evaluator.truth, evaluator.truth, other, keep="last")
        candidates = {"model": model_run.all_frames()[1:], "truth": truth, "warp": warp,
                      "blurred_warp": quality.best_blur(warp, truth).frames,
                      "baseline": np.repeat(truth_run.start[None], len(truth), axis=0)}
        for name, frames in candidates.items():
            sets.setdefault(name, []).append(_last_frames_of_steps(frames, per_step))
        sets.setdefault("other_truth", []).append(other_run.last_frames()[1:])
    sets = {name: np.stack(v, 1) for name, v in sets.items()}  # (steps, paths, H, W, 3)
    bands = []
    for first, last in horizon_bands(config.novel_chunks, config.fd_paths):
        flat = {name: f[first:last].reshape(-1, *f.shape[2:]) for name, f in sets.items()}
        truth_features = features.features(flat["truth"])
        shrinkage = 0.0 if len(flat["truth"]) > features.features(flat["truth"][:1]).shape[1] else FD_SHRINKAGE

        def distance(frames):
            return features.frechet_distance(features.features(frames), truth_features, shrinkage=shrinkage)

        band = {"steps": [first + 1, last], "num_frames": len(flat["truth"]), "shrinkage": shrinkage,
                "fd": distance(flat["model"]), "fd_floor": distance(flat["other_truth"]),
                "fd_blurred_truth": distance(quality.gaussian_blur(flat["truth"], 1.5))}
        for name in ("warp", "blurred_warp", "baseline"):
            band[f"{name}_fd"] = distance(flat[name])
        bands.append(band)
    summary = {f"far_{key}": value for key, value in bands[-1].items() if "fd" in key}
    return {"bands": bands, "summary": summary}


def horizon_bands(num_steps: int, frames_per_step: int, min_frames: int = BAND_MIN_FRAMES) -> list[tuple[int, int]]:
    """Split steps 0..num_steps-1 into up to three consecutive bands of at least ``min_frames``
    frames each (fewer bands when there are too few frames)."""
    for count in (3, 2, 1):
        edges = np.linspace(0, num_steps, count + 1).round().astype(int)
        bands = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        if all((b - a) * frames_per_step >= min_frames for a, b in bands):
            return bands
    return [(0, num_steps)]


def layout_plausible(labels: np.ndarray, c2w: np.ndarray, intrinsics, tolerance: float = 0.05,
                     margin_deg: float = 5.0) -> np.ndarray:
    """(N,) bool: does each frame's segmentation (N, H, W) sit where a camera posed ``c2w`` (N, 4, 4)
    would see it? Floor may not appear above the horizon, sky not below it (each at most a
    fraction ``tolerance`` of those pixels; a band of ``margin_deg`` around the horizon is free)."""
    num, height, width = labels.shape
    fx, fy, cx, cy = np.asarray(intrinsics, np.float64)
    v, u = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    up = np.einsum("nj,hwj->nhw", np.asarray(c2w)[:, 2, :3], rays)  # world z of each ray (z is up)
    above, below = up > math.sin(math.radians(margin_deg)), up < -math.sin(math.radians(margin_deg))
    floor, sky = labels == LABELS.index("floor"), labels == LABELS.index("sky")
    floor_above = (floor & above).sum((1, 2)) / np.maximum(above.sum((1, 2)), 1)
    sky_below = (sky & below).sum((1, 2)) / np.maximum(below.sum((1, 2)), 1)
    return (floor_above <= tolerance) & (sky_below <= tolerance)


def plausibility_by_band(evaluator, frames: dict[str, np.ndarray], poses: np.ndarray) -> dict:
    """Plausible-layout fraction (:func:`layout_plausible` on the evaluation encoder's
    segmentation) per horizon band, for the model, the baselines, the truth and the truth blurred
    by 1.5 px. ``frames[name]`` (steps, paths, frames_per_step, H, W, 3); ``poses`` (steps,
    paths, frames_per_step, 4, 4).

    (The Fréchet distance needs many independent frames: :func:`frechet_by_band`.)"""
    truth = frames["truth"]
    num_steps, _, per_step = truth.shape[:3]
    bands = []
    for first, last in horizon_bands(num_steps, truth.shape[1] * per_step):
        flat = {name: f[first:last].reshape(-1, *f.shape[3:]) for name, f in frames.items()}
        flat["blurred_truth"] = quality.gaussian_blur(flat["truth"], 1.5)
        band_poses = poses[first:last].reshape(-1, 4, 4)
        band = {"steps": [first + 1, last], "num_frames": len(flat["truth"])}
        for name, candidate in flat.items():
            prefix = "" if name == "model" else f"{name}_"
            band[prefix + "plausible_fraction"] = float(layout_plausible(features.segment(candidate), band_poses,
                                                                          evaluator.intrinsics).mean())
        bands.append(band)
    # the summary reports the farthest band, where the most content is new
    summary = {f"far_{key}": value for key, value in bands[-1].items() if key not in ("steps", "num_frames")}
    return {"bands": bands, "summary": summary}


_NOVEL_LABELS = {"turn_120": "turn 120° in place", "walk": "walk straight ahead", "orbit": "strafe around an object"}


@dataclass
class MotionDistances:
    """HY-WorldPlay's R_dist and T_dist of one run, from the per-step motions estimated from its frames."""

    r_dist: float | None  # mean rotation error against the command, radians
    t_dist: float | None  # mean distance between unit translation directions (2·sin(angle / 2)), steps that move
    failure_fraction: float  # steps whose motion could not be estimated: left out of both means


def _motion_distances(evaluator, run: Rollout) -> MotionDistances:
    """The per-step motions estimated from a run's frames against the commanded ones."""
    rotations, directions, failures = [], [], 0
    for k in range(run.num_chunks):
        rotation, direction = _evaluator.motion_errors(evaluator._motion(run.step_frames(k)),
                                                       _evaluator.commanded_motion(run.actions[k]))
        failures += rotation is None
        if rotation is not None:
            rotations.append(math.radians(rotation))
        if direction is not None:
            directions.append(2 * math.sin(math.radians(direction) / 2))
    return MotionDistances(float(np.mean(rotations)) if rotations else None,
                           float(np.mean(directions)) if directions else None, failures / run.num_chunks)


def revisit(evaluator) -> dict:
    """Frames on the way back against the truth, which returns exactly to where it was."""
    config, layout = evaluator.config, evaluator.layout
    per_step, paths, pooled = layout.frames_per_chunk, [], {}
    for i, (length, kind) in enumerate([(length, kind) for length in REVISIT_KINDS for kind in ("look", "walk")]):
        path = revisit_path(evaluator.scene, length, kind, layout.chunk_frames, seed=config.seed * 1000 + 800 + i)
        model_run, truth_run = paired_rollout(evaluator.model, evaluator.truth, path, seed=config.seed + 800 + i)
        truth = truth_run.all_frames()[1:]
        back = slice(len(truth) // 2, None)  # the way back: every frame at a pose of the way out
        frames, sigma = _candidates(evaluator, model_run, truth_run, path, config.seed + 800 + i)
        record = {"length": length, "kind": kind, "label": path.pose_string, "num_frames": 1 + len(truth),
                  "blurred_warp_sigma": sigma}
        seen, earlier = _revisited(evaluator, path, truth)
        for name, candidate in frames.items():
            mse = metrics.mse(candidate[back], truth[back])
            seen_err = np.where(seen[back, ..., None], (candidate[back].astype(np.float64) - truth[back]) ** 2, np.nan)
            record[name] = {"psnr_db": _psnr_db(mse), "mse": float(np.mean(mse)),
                            "seen_mse": _nanmean(_row_nanmean(seen_err.reshape(len(seen_err), -1))),
                            "ssim": float(metrics.ssim(candidate[back], truth[back]).mean()),
                            "final_psnr_db": _psnr_db(mse[-1:]),
                            "detail_ratio": quality.pooled_detail_ratio(candidate[back], truth[back])}
            pooled.setdefault((length, name), []).append(record[name])
        # the model against itself: each frame of the way back against its own frame at that pose
        # on the way out (the start frame for the last one), what a memory keeps whatever it drew
        model_all = model_run.all_frames()
        self_mse = metrics.mse(model_all[1:][back], model_all[earlier[back]])
        record["model"]["self_mse"] = float(np.mean(self_mse))
        record["seen_fraction"] = float(seen[back].mean())
        model_motion, truth_motion = _motion_distances(evaluator, model_run), _motion_distances(evaluator, truth_run)
        record["model"].update(r_dist=model_motion.r_dist, t_dist=model_motion.t_dist,
                               motion_failures=model_motion.failure_fraction)
        record.update(truth_r_dist=truth_motion.r_dist, truth_t_dist=truth_motion.t_dist,
                      truth_motion_failures=truth_motion.failure_fraction)
        paths.append(record)
    summary = {}
    for length in REVISIT_KINDS:
        records = [p for p in paths if p["length"] == length]
        for key in ("truth_r_dist", "truth_t_dist", "truth_motion_failures"):
            summary[f"revisit/{length}_{key}"] = _nanmean([p[key] for p in records if p[key] is not None])
        for kind in ("look", "walk"):  # the estimator's floor differs by kind: walks are its limit
            of_kind = [p for p in records if p["kind"] == kind]
            summary[f"revisit/{length}_{kind}_r_dist"] = _nanmean([p["model"]["r_dist"] for p in of_kind
                                                                   if p["model"]["r_dist"] is not None])
            summary[f"revisit/{length}_{kind}_truth_r_dist"] = _nanmean([p["truth_r_dist"] for p in of_kind
                                                                         if p["truth_r_dist"] is not None])
    for (length, name), records in pooled.items():
        prefix = f"revisit/{length}_" if name == "model" else f"revisit/{length}_{name}_"
        summary[prefix + "psnr_db"] = _psnr_db([r["mse"] for r in records])
        summary[prefix + "seen_psnr_db"] = _psnr_db([r["seen_mse"] for r in records if r["seen_mse"] is not None])
        if name == "model":
            summary[prefix + "self_psnr_db"] = _psnr_db([r["self_mse"] for r in records])
        summary[prefix + "ssim"] = _nanmean([r["ssim"] for r in records])
        summary[prefix + "detail_ratio"] = _nanmean([r["detail_ratio"] for r in records])
        if name == "model":
            summary[prefix + "r_dist"] = _nanmean([r["r_dist"] for r in records if r.get("r_dist") is not None])
            summary[prefix + "t_dist"] = _nanmean([r["t_dist"] for r in records if r.get("t_dist") is not None])
            summary[prefix + "motion_failures"] = _nanmean([r["motion_failures"] for r in records])
    return {"paths": paths, "summary": summary}


def _revisited(evaluator, path, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the N frames after the start of a revisit ``path`` (``truth`` (N, H, W, 3)): which
    pixels the start frame showed (N, H, W) bool, the places the model was given, and for each
    frame the index, in the rollout's 1 + N frames, of the first frame at the same pose (its
    own on the way out; the start for the last frame of the way back)."""
    poses = frame_world_poses(path, evaluator.layout.frames_per_chunk // evaluator.layout.chunk_frames)
    renderer = evaluator.truth.unwrapped.renderer
    depth = np.stack([renderer.render_depth(p) for p in poses])
    seen = quality.seen_mask(poses[0], depth[0], poses[1:], evaluator.intrinsics, depth[1:])
    flat = poses.reshape(len(poses), -1)
    same = np.abs(flat[1:, None] - flat[None]).max(-1) < 1e-6  # (N, 1 + N)
    back = slice(len(truth) // 2, None)
    if not same[back].any(1).all():
        raise RuntimeError(f"revisit path {path.pose_string!r}: a frame on the way back is at no pose of the way out")
    return seen, same.argmax(1)


def object_scale(evaluator) -> dict:
    """Walking at an object: the area the model draws it with over the truth's, per step."""
    config, layout = evaluator.config, evaluator.layout
    renderer = evaluator.truth.unwrapped.renderer
    mujoco = renderer._mujoco
    temporal_factor = layout.frames_per_chunk // layout.chunk_frames
    paths, pooled = [], {}
    for i in range(config.object_paths):
        path, geom_name = approach_path(evaluator.scene, config.object_chunks * layout.chunk_frames,
                                        seed=config.seed * 1000 + 900 + i)
        geom_id = mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_GEOM, geom_name)
        model_run, truth_run = paired_rollout(evaluator.model, evaluator.truth, path, seed=config.seed + 900 + i,
                                              keep="last")
        poses = frame_world_poses(path, temporal_factor)[::layout.frames_per_chunk]
        geoms = np.stack([renderer.render_labels(p)[1] for p in poses])
        truth = truth_run.last_frames()
        model = model_run.last_frames()
        baseline = np.repeat(truth[:1], len(truth), axis=0)
        record = {"label": f"walk at {geom_name}", "truth_area_px": (geoms == geom_id).sum((1, 2)).tolist()}
        for name, candidate in {"model": model, "baseline": baseline, "truth": truth}.items():
            ratio = quality.object_area_ratio(candidate, truth, geoms, geom_id)
            record[name] = {"area_ratio_curve": [None if not math.isfinite(v) else float(v) for v in ratio[1:]]}
            pooled.setdefault(name, []).extend(v for v in ratio[1:] if math.isfinite(v))
        paths.append(record)
    summary = {"object_scale/area_ratio": _median(pooled["model"]),
               "object_scale/baseline_area_ratio": _median(pooled["baseline"]),
               "object_scale/truth_area_ratio": _median(pooled["truth"])}
    return {"paths": paths, "summary": summary}


def _median(values) -> float | None:
    return float(np.median(values)) if len(values) else None
