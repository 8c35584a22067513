"""Issue 18's bars for a world model, on held-out layouts: the table of the model card.

    python benchmarks/default_bars.py --models minwm-default runs/v2/ship --out outputs/bars

For every model and every layout (each scene kind at a layout the training data never drew,
scene seed 100 by default) it measures, beside the free baselines measured in the same run:

- *seen content*: PSNR per horizon 1..H on the pixels the start frame showed (the truth's depth
  decides), against the network-free warp; whole-frame PSNR per horizon against repeat-start;
  the true actions against the negated ones;
- *detail and blocks*: the detail ratio (1 = the truth's) of every horizon's last frame and
  the blockiness index against the truth's (the drift suite);
- *new content*: the Fréchet distance of the novel-view suite's far band against the
  truth-vs-truth floor and the blurred warp;
- *objects*: the area of an approached object over the truth's, and the centroid offset of an
  orbited one (pixels);
- *standing still*: PSNR of the last frame after ``--idle-steps`` steps of the zero action.

Writes ``bars.json`` (every figure, per layout and pooled) and ``bars.md`` (one row per
measure, one column per model, the bar and whether it holds). Slow: minutes per model and
layout on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.eval import metrics, quality
from minwm_env.eval.evaluator import EvalConfig, Evaluator
from minwm_env.eval.generation import frame_world_poses, novel_view_path, seen_and_new
from minwm_env.eval.rollout import ground_truth_like, paired_rollout, rollout
from minwm_env.world.paths import random_path
from minwm_env.world.renderer import LABELS

HORIZON_KINDS = ("walk", "look_around", "turn", "zigzag")


def _mse_from_psnr(psnr_db: float | None) -> float:
    """NaN where a step has no seen pixel left (a long turn)."""
    return math.nan if psnr_db is None else 255.0 ** 2 * 10 ** (-psnr_db / 10)


def _psnr(mse) -> float:
    return float(metrics.capped(metrics.psnr_from_mse(np.mean(mse))))


def horizons(evaluator: Evaluator, num_paths: int, num_steps: int, seed: int) -> dict:
    """Per-step MSE curves (paths, steps) of the model on seen pixels, of the warp on seen
    pixels, of the model and repeat-start on whole frames, and of the negated actions."""
    layout = evaluator.layout
    per_step = layout.frames_per_chunk
    curves: dict[str, list] = {}
    for i in range(num_paths):
        path = random_path(evaluator.scene, 1 + num_steps * layout.chunk_frames, HORIZON_KINDS[i % len(HORIZON_KINDS)],
                           seed=seed * 1000 + 1800 + i)
        model_run, truth_run = paired_rollout(evaluator.model, evaluator.truth, path, seed=seed + 1800 + i)
        negated = rollout(evaluator.model, -model_run.actions, path.start_c2w, truth_run.start, seed=seed + 1800 + i)
        truth = truth_run.all_frames()[1:]
        model = model_run.all_frames()[1:]
        warp = evaluator._warp_baseline(model_run)
        poses = frame_world_poses(path, per_step // layout.chunk_frames)
        _, scores = seen_and_new(evaluator, poses, truth, {"model": model, "warp": warp})

        def per_step_mse(frames):
            return metrics.mse(frames, truth).reshape(-1, per_step).mean(1)

        curves.setdefault("seen_model", []).append([_mse_from_psnr(p) for p in scores["model"]["seen_psnr_db_curve"]])
        curves.setdefault("seen_warp", []).append([_mse_from_psnr(p) for p in scores["warp"]["seen_psnr_db_curve"]])
        curves.setdefault("model", []).append(per_step_mse(model))
        curves.setdefault("repeat_start", []).append(per_step_mse(np.repeat(truth_run.start[None], len(truth), 0)))
        curves.setdefault("negated", []).append(per_step_mse(negated.all_frames()[1:]))
    return {name: np.asarray(value, dtype=np.float64) for name, value in curves.items()}


def orbit_offset(evaluator: Evaluator, num_steps: int, seed: int) -> float | None:
    """Median distance (pixels) between the centroid of the orbited object in the model's last
    frames of each step and in the truth's (None: the object is never in view)."""
    layout = evaluator.layout
    renderer = evaluator.truth.unwrapped.renderer
    path = novel_view_path(evaluator.scene, "orbit", num_steps * layout.chunk_frames, seed=seed * 1000 + 1900)
    model_run, truth_run = paired_rollout(evaluator.model, evaluator.truth, path, seed=seed + 1900, keep="last")
    poses = frame_world_poses(path, layout.frames_per_chunk // layout.chunk_frames)[::layout.frames_per_chunk]
    labels, geoms = zip(*(renderer.render_labels(p) for p in poses))
    labels, geoms = np.stack(labels), np.stack(geoms)
    # the orbited object: the object geom that covers most of the truth's frames
    objects = geoms[np.isin(labels, [LABELS.index(name) for name in ("box", "sphere", "cylinder")])]
    if not len(objects):
        return None
    geom_id = int(np.bincount(objects).argmax())
    model, truth = model_run.last_frames(), truth_run.last_frames()
    masks = quality.object_mask(model, truth, geoms, geom_id)
    offsets = []
    for k in range(1, len(truth)):
        true_pixels, model_pixels = np.argwhere(geoms[k] == geom_id), np.argwhere(masks[k])
        if len(true_pixels) and len(model_pixels):
            offsets.append(float(np.linalg.norm(true_pixels.mean(0) - model_pixels.mean(0))))
        elif len(true_pixels):
            offsets.append(float(layout.width))  # the model lost it
    return float(np.median(offsets)) if offsets else None


def measure(model_name: str, scene: str, scene_seed: int, args) -> dict:
    env = WorldModelEnv(model=model_name, obs_mode="chunk", start_scene=scene)
    truth = ground_truth_like(env, scene, scene_seed)
    config = EvalConfig(drift_chunks=args.steps, drift_paths=args.paths, idle_chunks=args.idle_steps,
                        novel_chunks=10, fd_paths=args.fd_paths, object_paths=2, object_chunks=3, seed=args.seed,
                        mirrored=False)
    evaluator = Evaluator(env, truth, config)
    results = evaluator.run(("drift", "idle", "novel_view", "object_scale"))
    curves = horizons(evaluator, args.paths, args.steps, args.seed)
    orbit = orbit_offset(evaluator, 10, args.seed)
    env.close()
    truth.close()
    summary = results["summary"]
    return {"curves": {k: v.tolist() for k, v in curves.items()},
            "detail_ratio_curve": results["drift"]["detail_ratio_curve"],
            "blockiness_curve": results["drift"]["blockiness_curve"],
            "truth_blockiness_curve": results["drift"]["truth_blockiness_curve"],
            "fd_far": summary.get("novel_view/far_fd"), "fd_far_floor": summary.get("novel_view/far_fd_floor"),
            "fd_far_blurred_warp": summary.get("novel_view/far_blurred_warp_fd"),
            "fd_far_blurred_truth": summary.get("novel_view/far_fd_blurred_truth"),
            "object_area_ratio": summary.get("object_scale/area_ratio"),
            "orbit_offset_px": orbit, "idle_psnr_db": summary.get("idle/psnr_db_final"),
            "novel_seen_psnr_db": summary.get("novel_view/seen_psnr_db"),
            "novel_warp_seen_psnr_db": summary.get("novel_view/warp_seen_psnr_db"),
            "novel_new_detail_ratio": summary.get("novel_view/new_detail_ratio")}


def pool(per_layout: list[dict]) -> dict:
    """Every layout's figures pooled: MSE curves averaged per horizon, ratios and distances
    averaged over layouts."""
    curves = {name: np.concatenate([np.asarray(r["curves"][name]) for r in per_layout]) for name in
              per_layout[0]["curves"]}
    psnr = {name: metrics.capped(metrics.psnr_from_mse(np.nanmean(c, 0))).tolist() for name, c in curves.items()}
    pooled = {name: _psnr(np.nanmean(c)) for name, c in curves.items()}

    def mean(key, curve=False):
        values = [np.asarray(r[key], dtype=np.float64) for r in per_layout if r[key] is not None]
        return (np.nanmean(values, 0).tolist() if curve else float(np.nanmean(values))) if values else None

    return {"psnr_db_curve": psnr, "psnr_db": pooled,
            "detail_ratio_curve": mean("detail_ratio_curve", True), "blockiness_curve": mean("blockiness_curve", True),
            "truth_blockiness_curve": mean("truth_blockiness_curve", True),
            **{key: mean(key) for key in ("fd_far", "fd_far_floor", "fd_far_blurred_warp", "fd_far_blurred_truth",
                                          "object_area_ratio", "orbit_offset_px", "idle_psnr_db",
                                          "novel_seen_psnr_db", "novel_warp_seen_psnr_db", "novel_new_detail_ratio")}}


def bars(p: dict) -> list[tuple[str, str, str, bool | None]]:
    """(measure, value, bar, holds) rows from pooled figures."""
    curve = p["psnr_db_curve"]
    seen_gap = np.subtract(curve["seen_model"], curve["seen_warp"])
    start_gap = np.subtract(curve["model"], curve["repeat_start"])
    detail = np.asarray(p["detail_ratio_curve"], dtype=np.float64)
    blocks = np.nanmean(p["blockiness_curve"]) / np.nanmean(p["truth_blockiness_curve"])
    rows = [
        ("detail ratio, horizons 1..H (min / max)", f"{np.nanmin(detail):.2f} / {np.nanmax(detail):.2f}",
         "0.80..1.20 at every horizon", bool(np.all((detail >= 0.8) & (detail <= 1.2)))),
        ("blockiness / truth's", f"{blocks:.2f}", "0.85..1.15", bool(0.85 <= blocks <= 1.15)),
        ("Fréchet distance, far band (floor / blurred warp)",
         f"{p['fd_far']:.1f} ({p['fd_far_floor']:.1f} / {p['fd_far_blurred_warp']:.1f})",
         "≤ 2× floor and < blurred warp",
         bool(p["fd_far"] <= 2 * p["fd_far_floor"] and p["fd_far"] < p["fd_far_blurred_warp"])),
        ("seen-pixel PSNR − warp's, worst horizon / pooled, dB",
         f"{seen_gap.min():+.2f} / {p['psnr_db']['seen_model'] - p['psnr_db']['seen_warp']:+.2f}",
         "> 0 at every horizon, ≥ +1 pooled",
         bool(seen_gap.min() > 0 and p["psnr_db"]["seen_model"] - p["psnr_db"]["seen_warp"] >= 1)),
        ("PSNR − repeat-start's, worst horizon, dB", f"{start_gap.min():+.2f}", "> 0 at every horizon",
         bool(start_gap.min() > 0)),
        ("true − negated actions, pooled PSNR, dB", f"{p['psnr_db']['model'] - p['psnr_db']['negated']:+.2f}", "≥ 2",
         bool(p["psnr_db"]["model"] - p["psnr_db"]["negated"] >= 2)),
        ("approached object area / truth's", _fmt(p["object_area_ratio"]), "0.85..1.15",
         None if p["object_area_ratio"] is None else bool(0.85 <= p["object_area_ratio"] <= 1.15)),
        ("orbited object's centroid offset, px", _fmt(p["orbit_offset_px"], 1), "(stays where the truth keeps it)", None),
        ("PSNR after standing still, dB", _fmt(p["idle_psnr_db"], 1), "≥ 30",
         None if p["idle_psnr_db"] is None else bool(p["idle_psnr_db"] >= 30)),
    ]
    return rows


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minwm-default"], help="shipped models, presets or folders")
    parser.add_argument("--layouts", nargs="+", default=["room:100", "gallery:100", "courtyard:100", "pillars:100"],
                        help="scene:seed pairs (training drew seeds 0..99)")
    parser.add_argument("--steps", type=int, default=16, help="horizon in steps (chunks)")
    parser.add_argument("--paths", type=int, default=4, help="paths per layout for the horizon curves and drift")
    parser.add_argument("--idle-steps", type=int, default=100)
    parser.add_argument("--fd-paths", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="outputs/bars")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "models": {}}
    for model in args.models:
        per_layout = {}
        for layout in args.layouts:
            scene, seed = layout.split(":")
            began = time.perf_counter()
            per_layout[layout] = measure(model, scene, int(seed), args)
            print(f"{model} {layout}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        pooled = pool(list(per_layout.values()))
        report["models"][model] = {"layouts": per_layout, "pooled": pooled,
                                   "bars": [list(row) for row in bars(pooled)]}
        (out / "bars.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = ["| measure | bar | " + " | ".join(args.models) + " |", "|---|---|" + "---:|" * len(args.models)]
    tables = {m: bars(r["pooled"]) for m, r in report["models"].items()}
    for i, (name, _, bar, _) in enumerate(tables[args.models[0]]):
        cells = []
        for model in args.models:
            _, value, _, holds = tables[model][i]
            cells.append(value + ("" if holds is None else " ✓" if holds else " ✗"))
        lines.append(f"| {name} | {bar} | " + " | ".join(cells) + " |")
    (out / "bars.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
