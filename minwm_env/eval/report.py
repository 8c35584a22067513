"""Writing evaluation results: ``metrics.json``, PNG plots and ``report.md``.

    paths = write_report(results, "outputs/eval", title="tiny vs ground truth")
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .evaluator import DEFINITIONS
from .metrics import PSNR_CAP_DB


def to_json(value):
    """JSON-ready copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def _values(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_drift(drift: dict, path: Path) -> Path:
    plt = _pyplot()
    figure, (top, bottom, detail) = plt.subplots(3, 1, figsize=(7, 8.5), sharex=True)
    steps = np.arange(1, len(drift["psnr_db_curve"]) + 1)
    top.plot(steps, drift["psnr_db_curve"], label="model")
    top.plot(steps, drift["baseline_psnr_db_curve"], "--", label="repeat start frame")
    if "warp_psnr_db_curve" in drift:
        top.plot(steps, drift["warp_psnr_db_curve"], ":", label="start frame warped (no model)")
    top.set_ylabel(f"PSNR vs truth (dB, capped at {PSNR_CAP_DB:g})")
    top.legend()
    bottom.plot(steps, drift["ssim_curve"], label="model")
    bottom.plot(steps, drift["baseline_ssim_curve"], "--", label="repeat start frame")
    bottom.set_ylabel("SSIM vs truth")
    top.set_title("Accumulated drift: error against horizon")
    if "detail_ratio_curve" in drift:
        detail.plot(steps, _values(drift["detail_ratio_curve"]), label="detail / truth's (1 = as sharp)")
        detail.plot(steps, _values(drift["blockiness_curve"]), "--", label="blockiness, model")
        detail.plot(steps, _values(drift["truth_blockiness_curve"]), ":", label="blockiness, truth")
        detail.axhline(1.0, color="grey", linewidth=0.5)
        detail.set_ylabel("ratio")
        detail.legend(fontsize="small")
    detail.set_xlabel("horizon (steps of one chunk)")
    return _save(figure, path)


def _median_or_nan(values) -> float:
    values = _values(values)
    return float(np.nanmedian(values)) if np.isfinite(values).any() else np.nan


def plot_adherence(adherence: dict, path: Path) -> Path:
    plt = _pyplot()
    paths = adherence["paths"]
    labels = [f"{i}: {p.get('label', p['kind'])}" for i, p in enumerate(paths)]
    x = np.arange(len(paths))
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for axis, key, title in ((axes[0], "rotation_error_deg", "rotation error (deg)"),
                             (axes[1], "translation_direction_error_deg", "translation direction error (deg)")):
        axis.bar(x - 0.2, [_median_or_nan(p[key]) for p in paths], 0.4, label="model")
        axis.bar(x + 0.2, [_median_or_nan(p["truth_" + key]) for p in paths], 0.4,
                 label="ground truth (estimator noise)")
        axis.set_title(f"median {title} per path")
    steps = [len(p["rotation_error_deg"]) for p in paths]
    axes[2].bar(x - 0.2, [p["failures"] / n for p, n in zip(paths, steps)], 0.4, label="model")
    axes[2].bar(x + 0.2, [p["truth_failures"] / n for p, n in zip(paths, steps)], 0.4, label="ground truth")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("steps where motion could not be estimated")
    for axis in axes:
        axis.set_xticks(x, labels, rotation=30, ha="right")
        axis.legend(fontsize="small")
    return _save(figure, path)


def plot_consistency(adherence: dict, idle: dict | None, path: Path) -> Path:
    plt = _pyplot()
    paths = adherence["paths"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(paths))
    axes[0].bar(x - 0.2, [p["flicker"] for p in paths], 0.4, label="model")
    axes[0].bar(x + 0.2, [p["truth_flicker"] for p in paths], 0.4, label="ground truth")
    axes[0].set_xticks(x, [f"{i}: {p['kind']}" for i, p in enumerate(paths)], rotation=30, ha="right")
    axes[0].set_title("flicker: mean |frame t+1 - frame t| (0..255)")
    axes[0].legend()
    if idle is not None:
        curve = idle["difference_curve"]
        axes[1].plot(np.arange(1, len(curve) + 1), curve, marker="o")
        axes[1].set_xlabel("steps holding the zero action")
        axes[1].xaxis.get_major_locator().set_params(integer=True)
        axes[1].set_ylim(bottom=0)
    axes[1].set_title("idle: mean |frame - start frame| (0..255)")
    return _save(figure, path)


def plot_controllability(controllability: dict, path: Path) -> Path:
    plt = _pyplot()
    turn = controllability["patterns"][0]
    steps = np.arange(1, len(turn["commanded_yaw_deg"]) + 1)
    figure, axis = plt.subplots(figsize=(7, 4))
    # the command as a wide pale band underneath, the model's line on top: where the model
    # follows the command exactly, its line stays visible on the band
    axis.plot(steps, turn["commanded_yaw_deg"], "-", label="commanded", color="black", linewidth=8, alpha=0.2, zorder=1)
    axis.plot(steps, _values(turn["truth_estimated_yaw_deg"]), "x--", label="estimated from the truth's frames",
              color="tab:green", zorder=2)
    axis.plot(steps, _values(turn["estimated_yaw_deg"]), "o-", label="estimated from the model's frames",
              color="tab:blue", markerfacecolor="none", zorder=3)
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("step")
    axis.set_ylabel("yaw per step (deg)")
    axis.set_title(f"alternating turns ({turn['pattern']})")
    axis.legend()
    return _save(figure, path)


def plot_recovery(recovery: dict, path: Path) -> Path:
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, label in (("ood_inverted", "inverted colours"), ("ood_noise", "noise image")):
        curve = recovery[name]["divergence_curve"]
        left.plot(np.arange(len(curve)), curve, "o-", label=label)
    left.set_xlabel("step (0 = the unusual start image)")
    left.set_title("unusual start images")
    cache = recovery["cache"]
    curve = cache["divergence_curve"]
    right.plot(np.arange(1, len(curve) + 1), curve, "s-", color="tab:green")
    right.axvline(cache["perturb_at"] + 0.5, color="grey", linestyle=":", label="cache perturbed")
    right.set_xlabel("step")
    right.set_title("noise added to the KV cache")
    for axis in (left, right):
        axis.set_ylabel("mean |frame - undisturbed frame| (0..255)")
        axis.set_ylim(bottom=0)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend()
    figure.suptitle("Recovery: divergence from an undisturbed rollout (same seed and actions)")
    return _save(figure, path)


FRECHET_PLOT = "frechet.png"
# novel_view's Fréchet candidates: (band key, label, marker); the model is drawn apart, bold and on top
_FRECHET_BASELINES = [("baseline_fd", "repeat start frame", "v"), ("warp_fd", "start frame warped (no model)", "s"),
                      ("blurred_warp_fd", "warp blurred to its best PSNR", "^")]
_FRECHET_REFERENCES = [("fd_floor", "floor: the truth on other paths (an independent perfect model)", "x"),
                       ("fd_blurred_truth", "the truth blurred 1.5 px (what blur scores)", "+")]


def plot_frechet(bands: list[dict], path: Path) -> Path:
    """Fréchet distance to the truth per horizon band (novel_view's ``fd_bands``): the model,
    the free baselines, and as dashed references the truth on other paths and a blurred truth."""
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 6))
    x = np.arange(len(bands))
    for key, label, marker in _FRECHET_REFERENCES:
        axis.plot(x, _values([b.get(key) for b in bands]), marker=marker, linestyle="--", color="grey",
                  markersize=10, linewidth=1.2, label=label, zorder=2)
    for key, label, marker in _FRECHET_BASELINES:
        axis.plot(x, _values([b.get(key) for b in bands]), marker=marker, linewidth=1.2, markersize=7, alpha=0.8,
                  label=label, zorder=3)
    axis.plot(x, _values([b.get("fd") for b in bands]), "o-", color="black", linewidth=3, markersize=9,
              label="model", zorder=4)
    axis.set_xticks(x, [f"steps {b['steps'][0]}–{b['steps'][1]}\n({b['num_frames']} frames)" for b in bands])
    axis.set_xlim(-0.5, len(bands) - 0.5)
    plotted = _values([b.get(key) for b in bands for key in ("fd", "fd_floor", "fd_blurred_truth", "warp_fd",
                                                             "blurred_warp_fd", "baseline_fd")])
    finite = plotted[np.isfinite(plotted)]
    scale = ""
    if len(finite) and finite.min() > 0 and finite.max() > 10 * finite.min():
        # the floor (~2) and a repeated start frame (~100) can differ by orders of magnitude
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "235" else ""))
        axis.tick_params(axis="y", which="minor", labelsize="small")
        scale = "log scale; "
    else:  # within a decade, or the truth scored as a model (a distance of 0)
        axis.set_ylim(bottom=0)
    axis.set_xlabel("horizon band (steps after the start frame)")
    axis.set_ylabel(f"Fréchet distance to the truth ({scale}lower is better)")
    axis.set_title("New views: Fréchet distance to the truth per horizon band (eval-encoder-v1 features)")
    axis.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return _save(figure, path)


def write_plots(results: dict, out: Path) -> list[Path]:
    written = []
    if "drift" in results:
        written.append(plot_drift(results["drift"], out / "drift.png"))
    if "adherence" in results:
        written.append(plot_adherence(results["adherence"], out / "adherence.png"))
        written.append(plot_consistency(results["adherence"], results.get("idle"), out / "consistency.png"))
    if "controllability" in results:
        written.append(plot_controllability(results["controllability"], out / "controllability.png"))
    if "recovery" in results and "cache" in results["recovery"]:
        written.append(plot_recovery(results["recovery"], out / "recovery.png"))
    if results.get("novel_view", {}).get("fd_bands"):
        written.append(plot_frechet(results["novel_view"]["fd_bands"], out / FRECHET_PLOT))
    return written


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


# (label, model key, reference key, reference label)
_ROWS = [
    ("rotation error vs command (deg, median)", "adherence/rotation_error_deg", "adherence/truth_rotation_error_deg",
     "truth"),
    ("translation direction error (deg, median)", "adherence/translation_direction_error_deg",
     "adherence/truth_translation_direction_error_deg", "truth"),
    ("motion estimation failures", "adherence/failure_fraction", "adherence/truth_failure_fraction", "truth"),
    ("rotation error vs the truth's estimate (deg)", "adherence/pose_rotation_error_deg", None, ""),
    ("translation direction error vs the truth's estimate (deg)", "adherence/pose_translation_error_deg", None, ""),
    ("PSNR vs truth (dB)", "adherence/psnr_db", "adherence/baseline_psnr_db", "repeat start"),
    ("PSNR vs truth, actions negated (dB)", "adherence/mirrored_psnr_db", None, ""),
    ("PSNR vs truth of the warped start frame, no model (dB)", "adherence/warp_psnr_db", None, ""),
    ("SSIM vs truth", "adherence/ssim", "adherence/baseline_ssim", "repeat start"),
    ("PSNR on pixels the start frame showed (dB)", "adherence/seen_psnr_db", "adherence/warp_seen_psnr_db", "warp"),
    ("detail on newly revealed pixels / truth's", "adherence/new_detail_ratio", "adherence/warp_new_detail_ratio",
     "warp"),
    ("drift: PSNR over the long rollout (dB)", "drift/psnr_db", "drift/baseline_psnr_db", "repeat start"),
    ("drift: PSNR at the last step (dB)", "drift/psnr_db_final", None, ""),
    ("drift: horizons beating the baseline", "drift/beats_baseline_fraction", None, ""),
    ("drift: PSNR of the warped start frame (dB)", "drift/warp_psnr_db", None, ""),
    ("drift: horizons beating the warped start frame", "drift/beats_warp_fraction", None, ""),
    ("drift: detail / truth's (1 = as sharp)", "drift/detail_ratio", None, ""),
    ("drift: detail / truth's at the last step", "drift/detail_ratio_final", None, ""),
    ("drift: blockiness (4-px grid)", "drift/blockiness", "drift/truth_blockiness", "truth"),
    ("flicker (0..255)", "consistency/flicker", "consistency/truth_flicker", "truth"),
    ("flicker / truth's flicker", "consistency/flicker_ratio", None, ""),
    ("loop closure error (0..255)", "consistency/loop_closure_error", "consistency/truth_loop_closure_error", "truth"),
    ("alternating commands followed", "controllability/direction_agreement",
     "controllability/truth_direction_agreement", "truth"),
    ("idle: final difference from the start frame (0..255)", "idle/final_difference", None, ""),
    ("idle: estimated rotation per step (deg)", "idle/estimated_rotation_deg_per_step", None, ""),
    ("recovery from inverted start (steps to half)", "recovery/ood_inverted_half_recovery_steps", None, ""),
    ("recovery from noise start (steps to half)", "recovery/ood_noise_half_recovery_steps", None, ""),
    ("recovery from cache noise (steps to half)", "recovery/cache_half_recovery_steps", None, ""),
]


# The generation suites' table: (label, unit and better direction, summary key without prefix).
_GENERATION_ROWS = [
    ("novel view: PSNR on seen pixels", "dB, higher", "novel_view/{}seen_psnr_db"),
    ("novel view: SSIM on seen pixels", "0..1, higher", "novel_view/{}seen_ssim"),
    ("novel view: detail on new pixels", "ratio, 1 = truth", "novel_view/{}new_detail_ratio"),
    ("novel view: blockiness", "ratio, truth's ≈ 1", "novel_view/{}blockiness"),
    ("novel view: plausible layout, far band", "fraction, higher", "novel_view/far_{}plausible_fraction"),
    ("novel view: Fréchet distance, far band", "feature units, lower", "novel_view/far_{}fd"),
    ("revisit (65 frames): PSNR on the way back", "dB, higher", "revisit/short_{}psnr_db"),
    ("revisit (65 frames): detail on the way back", "ratio, 1 = truth", "revisit/short_{}detail_ratio"),
    ("revisit (257 frames): PSNR on the way back", "dB, higher", "revisit/long_{}psnr_db"),
    ("revisit (257 frames): SSIM on the way back", "0..1, higher", "revisit/long_{}ssim"),
    ("revisit (257 frames): detail on the way back", "ratio, 1 = truth", "revisit/long_{}detail_ratio"),
    ("object scale: drawn area / true area", "ratio, 1 = truth", "object_scale/{}area_ratio"),
]
_GENERATION_COLUMNS = [("model", ""), ("repeat start", "baseline_"), ("warp", "warp_"),
                       ("blurred warp", "blurred_warp_"), ("negated actions", "mirrored_"), ("truth", "truth_")]


def generation_table(summary: dict, frechet_plot: Path | None = None) -> list[str]:
    """Markdown lines: the generation suites' figures beside every baseline ("n/a" where a
    baseline is not measured for that row), with the Fréchet plot under its references."""
    rows = [row for row in _GENERATION_ROWS if row[2].format("") in summary]
    if not rows:
        return []
    lines = ["## What blur cannot win", "",
             "New content is judged by detail and plausibility, seen content by PSNR/SSIM, revisits against "
             "the truth, which returns exactly. The blurred warp is the warp blurred by the Gaussian that "
             "maximises its PSNR: where it beats the model on PSNR but not on detail, PSNR is rewarding blur.", "",
             "| metric | unit, better | " + " | ".join(name for name, _ in _GENERATION_COLUMNS) + " |",
             "|---|---|" + "---|" * len(_GENERATION_COLUMNS)]
    for label, unit, key in rows:
        cells = []
        for _, prefix in _GENERATION_COLUMNS:
            value = summary.get(key.format(prefix))
            cells.append("n/a" if value is None else _fmt(value))
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    if "novel_view/far_fd" in summary:
        lines.append(f"\nFréchet distance references, same frames: the truth on other paths of the layout "
                     f"{_fmt(summary.get('novel_view/far_fd_floor'))} (what an independent perfect model scores), the "
                     f"truth blurred by 1.5 px {_fmt(summary.get('novel_view/far_fd_blurred_truth'))} (what blur "
                     f"scores); encoder eval-encoder-v1.")
        if frechet_plot is not None:
            lines += ["", "Fréchet distance per horizon band (lower is better; dashed: the floor and the blurred truth):",
                      "", f"![{frechet_plot.stem}]({frechet_plot.name})"]
    lines += revisit_motion_table(summary)
    return lines + [""]


def revisit_motion_table(summary: dict) -> list[str]:
    """Markdown lines: R_dist / T_dist of the revisits, the model beside the truth's own frames,
    which are the motion estimator's floor (a perfect model scores them), split by kind of path:
    walks have the higher floor, forward motion being the estimator's limit at 64×64."""
    lengths = [length for length in ("short", "long") if f"revisit/{length}_r_dist" in summary]
    if not lengths:
        return []
    lines = ["", "Camera motion estimated from the frames on the revisits: R_dist (radians) and T_dist (unit-vector "
             "distance), lower is better. The truth's own frames give the motion estimator's floor, what a perfect "
             "model scores (a model can land below it by chance); on walks the floor is higher, forward motion being "
             "the estimator's limit at 64×64 (minwm_env/eval/motion.py, `python -m minwm_env.eval.motion_floor`). "
             "Steps whose motion could not be estimated are left out of both.", "",
             "| revisit | R_dist: model | R_dist: truth (floor) | looks: model / truth | walks: model / truth | "
             "T_dist: model | T_dist: truth (floor) | steps without an estimate: model / truth |",
             "|---|---|---|---|---|---|---|---|"]
    for length in lengths:
        def value(key: str, digits: int = 3) -> str:
            return _fmt(summary.get(f"revisit/{length}_{key}"), digits)

        lines.append(f"| {dict(short=65, long=257)[length]} frames | {value('r_dist')} | {value('truth_r_dist')} | "
                     f"{value('look_r_dist')} / {value('look_truth_r_dist')} | "
                     f"{value('walk_r_dist')} / {value('walk_truth_r_dist')} | {value('t_dist', 2)} | "
                     f"{value('truth_t_dist', 2)} | {value('motion_failures', 2)} / "
                     f"{value('truth_motion_failures', 2)} |")
    return lines


# (what, model key, better: "higher" or "lower" or "one", baselines as (label, key))
_VERDICT = [
    ("PSNR over the paths", "adherence/psnr_db", "higher",
     [("repeat start", "adherence/baseline_psnr_db"), ("the warp", "adherence/warp_psnr_db"),
      ("negated actions", "adherence/mirrored_psnr_db")]),
    ("PSNR over the long rollout", "drift/psnr_db", "higher",
     [("repeat start", "drift/baseline_psnr_db"), ("the warp", "drift/warp_psnr_db")]),
    ("PSNR on seen pixels of new views", "novel_view/seen_psnr_db", "higher",
     [("repeat start", "novel_view/baseline_seen_psnr_db"), ("the warp", "novel_view/warp_seen_psnr_db"),
      ("the blurred warp", "novel_view/blurred_warp_seen_psnr_db")]),
    ("detail on new pixels", "novel_view/new_detail_ratio", "one",
     [("repeat start", "novel_view/baseline_new_detail_ratio"), ("the warp", "novel_view/warp_new_detail_ratio"),
      ("the blurred warp", "novel_view/blurred_warp_new_detail_ratio")]),
    ("Fréchet distance of new views (far band)", "novel_view/far_fd", "lower",
     [("repeat start", "novel_view/far_baseline_fd"), ("the warp", "novel_view/far_warp_fd"),
      ("the blurred warp", "novel_view/far_blurred_warp_fd"), ("a blurred truth", "novel_view/far_fd_blurred_truth")]),
    ("PSNR on 257-frame revisits", "revisit/long_psnr_db", "higher",
     [("repeat start", "revisit/long_baseline_psnr_db"), ("the warp", "revisit/long_warp_psnr_db"),
      ("the blurred warp", "revisit/long_blurred_warp_psnr_db")]),
    ("size of approached objects", "object_scale/area_ratio", "one",
     [("repeat start", "object_scale/baseline_area_ratio")]),
]


def _better(model: float, other: float, better: str) -> bool:
    if better == "higher":
        return model > other
    if better == "lower":
        return model < other
    return abs(model - 1.0) < abs(other - 1.0)


def verdict(summary: dict) -> list[str]:
    """The report's first paragraph: which free baselines the model beats and where it fails,
    from whichever suites ran."""
    wins, losses = [], []
    for what, key, better, baselines in _VERDICT:
        model = summary.get(key)
        if model is None or not math.isfinite(model):
            continue
        beaten = [label for label, other in baselines if summary.get(other) is not None
                  and _better(model, summary[other], better)]
        lost = [label for label, other in baselines if summary.get(other) is not None
                and not _better(model, summary[other], better)]
        if beaten:
            wins.append(f"{what} ({_fmt(model)}) beats {', '.join(beaten)}")
        if lost:
            losses.append(f"{what} ({_fmt(model)}) does not beat {', '.join(lost)}")
    if not wins and not losses:
        return []
    lines = ["**Verdict.** " + ("; ".join(wins) + "." if wins else "It beats none of the free baselines.")]
    if losses:
        lines.append("Where it fails: " + "; ".join(losses) + ".")
    lines.append("(The free baselines cost nothing: repeating the start frame, the start frame warped along the "
                 "command, that warp blurred to its best PSNR. A model that only ties them is not yet a world model.)")
    return [" ".join(lines), ""]


def markdown(results: dict, images: list[Path], title: str) -> str:
    summary = results["summary"]
    lines = [f"# {title}", "", f"{results.get('meta', {}).get('date', '')} · "
             f"{results.get('meta', {}).get('machine', '')}", ""] + verdict(summary) + [
             "| metric | model | reference |", "|---|---|---|"]
    for label, key, reference, reference_label in _ROWS:
        if key not in summary:
            continue
        ref = "" if reference is None else f"{_fmt(summary.get(reference))} ({reference_label})"
        lines.append(f"| {label} | {_fmt(summary.get(key))} | {ref} |")
    lines += ["", "The truth's own adherence errors are the motion estimator's noise floor; a model cannot be "
              "expected to score below them.", ""]
    frechet_plot = next((image for image in images if image.name == FRECHET_PLOT), None)
    lines += generation_table(summary, frechet_plot)
    for image in images:
        if image is not frechet_plot:  # shown beside the Fréchet figures
            lines += [f"![{image.stem}]({image.name})", ""]
    recovery = results.get("recovery", {})
    if "skipped" in recovery:
        lines += [f"Recovery: skipped ({recovery['skipped']}).", ""]
    hardware = results.get("hardware")
    if hardware:
        lines += ["## Hardware sensitivity", "",
                  "| device | dtype | batch | first chunk (s) | first chunk, no VAE (s) | chunk (s) | frames/s | "
                  "late/early chunk | peak memory (GB) |", "|---|---|---|---|---|---|---|---|---|"]
        for row in hardware:
            if "error" in row:
                lines.append(f"| {row['device']} | {row['dtype']} | {row['batch_size']} | {row['error']} |||||| ")
                continue
            lines.append(f"| {row['device']} | {row['dtype']} | {row['batch_size']} | "
                         f"{_fmt(row['first_chunk_s'], 3)} | {_fmt(row['first_chunk_no_vae_s'], 3)} | "
                         f"{_fmt(row['chunk_s'], 3)} | "
                         f"{_fmt(row['frames_per_s'], 1)} | {_fmt(row['late_over_early'])} | "
                         f"{_fmt(row['peak_memory_gb'])} |")
        lines += ["", "First chunk: a fresh episode's first chunk of frames (median after a warm-up); without the VAE "
                  "it is ready as latents. Chunk and frames/s: steady streaming, all batch rows counted. Peak memory: "
                  "CUDA's peak allocation per row; on the CPU the whole process's peak resident set so far.", ""]
    lines += ["## Definitions", ""] + [f"- `{k}`: {v}" for k, v in DEFINITIONS.items()]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out, title: str = "minwm evaluation") -> dict[str, Path]:
    """Write ``metrics.json``, the plots and ``report.md`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(to_json(results), indent=1) + "\n")
    images = write_plots(results, out)
    report_path = out / "report.md"
    report_path.write_text(markdown(results, images, title))
    return {"metrics": metrics_path, "report": report_path, **{p.stem: p for p in images}}


__all__ = ["FRECHET_PLOT", "markdown", "plot_frechet", "to_json", "write_plots", "write_report"]
