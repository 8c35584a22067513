"""Evaluating a world model of the robot arm against the arm's ground truth (``minwm-eval --against arm-truth``).

Camera metrics (rotation error, R_dist, the warp baselines, novel views, revisits) do not apply
to a fixed camera; what does, per horizon h = 1..H env steps (one chunk of ``chunk_frames``
latent frames each) on held-out starts and action sequences:

* **PSNR against the truth**, the model given the true actions beside the free baselines:
  repeating the start frame, and the same model given *shuffled* actions (another held-out
  sequence's: plausible commands, not these), *permuted* ones (this sequence's rows in another
  order: the same sum, so the same final targets unless a joint hit its limit: the gap closes
  by the last step by construction) or *zeroed* ones (the neutral action). A model that ignores
  its actions ties the shuffled run; one that only copies ties repeat-start. How far apart true
  and shuffled actions put the truth itself (the truth given the shuffled actions, against the
  truth) is the most a gap can be.
* **Where the arm is**: the arm's pixels in the model's frame against the truth's own
  segmentation, as IoU per step. The model's frames have no segmentation, so a colour
  classifier (nearest colour centroid per class: background, arm, puck), fitted on the truth's
  frames and masks of the same run, labels both; its IoU on the truth's frames is the ceiling.
  Repeating the start frame's arm mask is the baseline.
* **Whether pushed objects move**: the puck's centroid in the model's frames against the
  truth's, and whether both agree that it moved.

Starts are ``ArmTruthEnv`` resets with seeds from :data:`HELD_OUT_SEED` (training clips draw
their states from ``minwm-data render``'s own generator) and action sequences of every kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import metrics

HELD_OUT_SEED = 100_000
VARIANTS = ("true", "shuffled", "permuted", "zeroed")
OTHER_KINDS = ("smooth", "sweep", "random")  # the shuffled sequences' kinds (scripted kinds need the state)
CLASSES = ("background", "arm", "object")
# Not meaningful for a fixed camera: reported as "n/a" so a reader sees they were not forgotten.
CAMERA_ONLY = ("adherence/rotation_error_deg", "adherence/translation_error_deg", "drift/warp_psnr_db",
               "consistency/loop_closure_error", "novel_view", "revisit", "object_scale")
MOVED_PX = 1.0  # a puck centroid that moved more than this (pixels) has moved
PUCK_SEARCH_PX = 6.0  # the model's puck is looked for this close to the truth's path of it


@dataclass
class ArmEvalConfig:
    """Sizes of the arm evaluation."""

    num_sequences: int = 10
    horizon: int = 8  # env steps per sequence
    kinds: tuple[str, ...] = ("random", "smooth", "sweep", "reach", "push")
    seed: int = 0  # sequence i uses env seed HELD_OUT_SEED + 1000 · seed + i
    centroids_per_class: int = 4

    def __post_init__(self):
        from ..world.arm import ARM_ACTION_KINDS

        if self.num_sequences < 1 or self.horizon < 1:
            raise ValueError(f"num_sequences and horizon must be >= 1, got {self.num_sequences}, {self.horizon}")
        unknown = sorted(set(self.kinds) - set(ARM_ACTION_KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"kinds must name arm action kinds {ARM_ACTION_KINDS}, got {list(self.kinds)}")
        self.kinds = tuple(self.kinds)


class ColourClassifier:
    """Labels pixels background / arm / object by the nearest of a few colour centroids per class,
    fitted (k-means) on frames whose true labels are known."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray, per_class: int = 4, seed: int = 0):
        pixels = frames.reshape(-1, 3).astype(np.float64)
        flat = labels.reshape(-1)
        rng = np.random.default_rng(seed)
        centroids, owners = [], []
        for index in range(len(CLASSES)):
            own = pixels[flat == index]
            if len(own) == 0:
                continue
            k = min(per_class, len(own))
            centres = own[rng.choice(len(own), k, replace=False)]
            for _ in range(10):
                nearest = ((own[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
                centres = np.stack([own[nearest == j].mean(0) if (nearest == j).any() else centres[j]
                                    for j in range(k)])
            centroids.append(centres)
            owners += [index] * k
        if not centroids:
            raise ValueError("the colour classifier needs labelled pixels")
        self.centroids, self.owners = np.concatenate(centroids), np.array(owners)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(..., H, W, 3) uint8 → (..., H, W) class indices."""
        pixels = frames.reshape(-1, 3).astype(np.float64)
        nearest = ((pixels[:, None] - self.centroids[None]) ** 2).sum(-1).argmin(1)
        return self.owners[nearest].reshape(frames.shape[:-1])


def labels_from_masks(arm: np.ndarray, obj: np.ndarray) -> np.ndarray:
    labels = np.zeros(arm.shape, dtype=np.int64)
    labels[arm] = CLASSES.index("arm")
    labels[obj] = CLASSES.index("object")
    return labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.full(2, np.nan)


def near_segment(shape: tuple[int, int], a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """(H, W) bool: pixels within ``radius`` of the segment from ``a`` to ``b`` ((x, y) pixels)."""
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    points = np.stack([xs, ys], axis=-1).astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return np.zeros(shape, dtype=bool)
    span = b - a
    t = np.clip(((points - a) @ span) / max(float(span @ span), 1e-9), 0, 1)
    return np.linalg.norm(points - (a + t[..., None] * span), axis=-1) <= radius


def _psnr(mse_values) -> float:
    return float(metrics.psnr_from_mse(np.mean(mse_values)))


def _rollout(env, start: np.ndarray, seed: int, actions: np.ndarray, chunk_frames: int) -> list[np.ndarray]:
    """The model's frames of each step, (frames_per_chunk, H, W, 3) per step."""
    env.reset(seed=seed, options={"image": start})
    out = []
    for h in range(len(actions) // chunk_frames):
        _, _, _, _, info = env.step(actions[h * chunk_frames:(h + 1) * chunk_frames].astype(np.float32))
        out.append(np.asarray(info["frames"]))
    return out


def evaluate_arm(model_env, truth_env, config: ArmEvalConfig, progress: bool = True) -> dict:
    """Roll the model and the truth out side by side; per-horizon figures and a summary."""
    from ..world.arm import arm_actions

    truth = truth_env.unwrapped
    chunk_frames = truth.chunk_frames
    spec = truth.spec_actions
    sequences, strips = [], []
    errors = {name: [[] for _ in range(config.horizon)] for name in (*VARIANTS, "repeat_start", "truth_shuffled")}
    ious = {name: [[] for _ in range(config.horizon)] for name in ("true", "shuffled", "repeat_start", "ceiling")}
    object_records = []
    for i in tqdm(range(config.num_sequences), desc="arm eval", unit="sequence", disable=not progress):
        seed = HELD_OUT_SEED + 1000 * config.seed + i
        kind = config.kinds[i % len(config.kinds)]
        _, info = truth_env.reset(seed=seed)
        start = np.asarray(info["frames"])[-1]
        start_arm, start_object = info["arm_mask"], info["object_mask"]
        actions = arm_actions(kind, config.horizon * chunk_frames + 1, seed, world=truth.world)
        truth_steps, arm_masks, object_masks, object_xy = [], [], [], [info["object_xy"]]
        for h in range(config.horizon):
            _, _, _, _, step = truth_env.step(actions[h * chunk_frames:(h + 1) * chunk_frames].astype(np.float32))
            truth_steps.append(np.asarray(step["frames"]))
            arm_masks.append(step["arm_mask"])
            object_masks.append(step["object_mask"])
            object_xy.append(step["object_xy"])
        shuffled = arm_actions(OTHER_KINDS[i % len(OTHER_KINDS)], len(actions) + 1, seed + 7919)
        permuted = actions[np.random.default_rng(seed).permutation(len(actions))]
        zeroed = np.broadcast_to(spec.neutral().numpy(), actions.shape)
        runs = {name: _rollout(model_env, start, seed, values, chunk_frames)
                for name, values in (("true", actions), ("shuffled", shuffled), ("permuted", permuted),
                                     ("zeroed", zeroed))}
        truth_env.reset(seed=seed)  # the truth under the shuffled actions: the largest gap there is
        truth_shuffled = [np.asarray(truth_env.step(shuffled[h * chunk_frames:(h + 1) * chunk_frames]
                                                    .astype(np.float32))[4]["frames"]) for h in range(config.horizon)]
        classifier = ColourClassifier(np.stack([start] + [s[-1] for s in truth_steps]),
                                      np.stack([labels_from_masks(start_arm, start_object)] +
                                               [labels_from_masks(a, o) for a, o in zip(arm_masks, object_masks)]),
                                      config.centroids_per_class, seed)
        arm_id, object_id = CLASSES.index("arm"), CLASSES.index("object")
        record = {"seed": seed, "kind": kind, "psnr_db": {}, "mask_iou": {}}
        for h in range(config.horizon):
            reference = truth_steps[h].astype(np.float64)
            for name, run in runs.items():
                errors[name][h].append(float(np.mean((run[h] - reference) ** 2)))
            errors["repeat_start"][h].append(float(np.mean((start.astype(np.float64)[None] - reference) ** 2)))
            errors["truth_shuffled"][h].append(float(np.mean((truth_shuffled[h] - reference) ** 2)))
            for name in ("true", "shuffled"):
                ious[name][h].append(iou(classifier(runs[name][h][-1]) == arm_id, arm_masks[h]))
            ious["repeat_start"][h].append(iou(start_arm, arm_masks[h]))
            ious["ceiling"][h].append(iou(classifier(truth_steps[h][-1]) == arm_id, arm_masks[h]))
        for name in (*VARIANTS, "repeat_start", "truth_shuffled"):
            record["psnr_db"][name] = [_psnr(errors[name][h][-1:]) for h in range(config.horizon)]
        for name in ("true", "shuffled", "repeat_start"):
            record["mask_iou"][name] = [ious[name][h][-1] for h in range(config.horizon)]
        # the puck: truth's displacement (pixels, from its masks) against the model's (classified)
        truth_shift = np.linalg.norm(centroid(object_masks[-1]) - centroid(start_object))
        # the model's puck: puck-coloured pixels near the truth's path of it (start to end, within
        # PUCK_SEARCH_PX), so stray colours elsewhere (the arm's blur, the goal) do not count
        model_object = (classifier(runs["true"][-1][-1]) == object_id) & near_segment(
            start_object.shape, centroid(start_object), centroid(object_masks[-1]), PUCK_SEARCH_PX)
        model_shift = np.linalg.norm(centroid(model_object) - centroid(start_object))
        object_records.append({"truth_moved": bool(truth_shift > MOVED_PX), "truth_shift_px": float(truth_shift),
                               "model_shift_px": float(model_shift),
                               "final_centroid_error_px": float(np.linalg.norm(centroid(model_object) -
                                                                               centroid(object_masks[-1]))),
                               "truth_moved_m": float(np.linalg.norm(object_xy[-1] - object_xy[0]))})
        record.update(object_records[-1])
        sequences.append(record)
        if len(strips) < 4:
            strips.append({"kind": kind, "truth": [s[-1] for s in truth_steps],
                           **{name: [step[-1] for step in runs[name]] for name in ("true", "shuffled")},
                           "start": start})
    psnr = {name: [_psnr(errors[name][h]) for h in range(config.horizon)] for name in errors}
    mask_iou = {name: [float(np.mean(ious[name][h])) for h in range(config.horizon)] for name in ious}
    pooled = {name: _psnr([e for per_h in errors[name] for e in per_h]) for name in errors}
    moved = [r for r in object_records if r["truth_moved"]]
    still = [r for r in object_records if not r["truth_moved"]]
    h4 = min(4, config.horizon) - 1
    summary = {
        "arm/psnr_db": pooled["true"], "arm/shuffled_psnr_db": pooled["shuffled"],
        "arm/permuted_psnr_db": pooled["permuted"], "arm/zeroed_psnr_db": pooled["zeroed"],
        "arm/repeat_start_psnr_db": pooled["repeat_start"],
        "arm/true_minus_shuffled_db": pooled["true"] - pooled["shuffled"],
        "arm/true_minus_shuffled_db_per_horizon": [t - u for t, u in zip(psnr["true"], psnr["shuffled"])],
        "arm/truth_shuffled_psnr_db": pooled["truth_shuffled"],
        "arm/true_minus_permuted_db": pooled["true"] - pooled["permuted"],
        "arm/beats_repeat_start_every_horizon": all(m > r for m, r in zip(psnr["true"], psnr["repeat_start"])),
        f"arm/mask_iou_h{h4 + 1}": mask_iou["true"][h4],
        f"arm/shuffled_mask_iou_h{h4 + 1}": mask_iou["shuffled"][h4],
        f"arm/repeat_start_mask_iou_h{h4 + 1}": mask_iou["repeat_start"][h4],
        f"arm/mask_iou_ceiling_h{h4 + 1}": mask_iou["ceiling"][h4],
        "arm/pushes": len(moved),
        "arm/push_moved_agreement": (float(np.mean([r["model_shift_px"] > MOVED_PX for r in moved]))
                                     if moved else None),
        "arm/still_object_kept": (float(np.mean([r["model_shift_px"] <= MOVED_PX for r in still]))
                                  if still else None),
        "arm/push_final_centroid_error_px": (float(np.nanmean([r["final_centroid_error_px"] for r in moved]))
                                             if moved else None),
    }
    for key in CAMERA_ONLY:
        summary[key] = "n/a"
    return {"config": asdict(config), "summary": summary, "psnr_db_per_horizon": psnr,
            "mask_iou_per_horizon": mask_iou, "sequences": sequences, "_strips": strips}


def plot_arm(results: dict, path: Path) -> Path:
    from .report import _pyplot, _save

    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    psnr, masks = results["psnr_db_per_horizon"], results["mask_iou_per_horizon"]
    steps = np.arange(1, len(psnr["true"]) + 1)
    styles = {"true": ("-o", "model, true actions"), "shuffled": ("--s", "model, another sequence's actions"),
              "permuted": ("--d", "model, permuted actions"), "zeroed": (":^", "model, zeroed actions"),
              "repeat_start": ("-.x", "repeat start frame"),
              "truth_shuffled": (":", "the truth, another sequence's actions")}
    for name, (style, label) in styles.items():
        top.plot(steps, psnr[name], style, label=label, linewidth=2.2 if name == "true" else 1.2)
    top.set_ylabel("PSNR vs truth (dB)")
    top.set_title("Arm world model against the arm's truth, held-out sequences")
    top.legend(fontsize="small")
    for name, (style, label) in {"true": ("-o", "model, true actions"), "shuffled": ("--s", "model, shuffled"),
                                 "repeat_start": ("-.x", "start frame's arm"),
                                 "ceiling": (":", "classifier on the truth (ceiling)")}.items():
        bottom.plot(steps, masks[name], style, label=label, linewidth=2.2 if name == "true" else 1.2)
    bottom.set_ylabel("arm mask IoU with the truth")
    bottom.set_xlabel("horizon (env steps of one chunk)")
    bottom.set_xticks(steps)
    bottom.set_ylim(0, 1)
    bottom.legend(fontsize="small")
    return _save(figure, path)


def strip_image(strips: list[dict]) -> np.ndarray:
    """Per sequence three rows (truth, model with true actions, model with shuffled actions),
    the start frame then each step's last frame."""
    from ..rollout import contact_sheet

    rows = []
    for strip in strips:
        for name in ("truth", "true", "shuffled"):
            rows.append(np.stack([strip["start"], *strip[name]]))
    return contact_sheet(rows)


def write_arm_report(results: dict, out: Path, title: str) -> dict[str, Path]:
    import imageio.v3 as iio

    from .report import to_json

    out.mkdir(parents=True, exist_ok=True)
    strips = results.pop("_strips")
    written = {"metrics": out / "metrics.json", "report": out / "report.md"}
    written["metrics"].write_text(json.dumps(to_json(results), indent=1))
    written["plot"] = plot_arm(results, out / "arm.png")
    iio.imwrite(out / "arm_strips.png", strip_image(strips))
    written["strips"] = out / "arm_strips.png"
    summary, psnr, masks = results["summary"], results["psnr_db_per_horizon"], results["mask_iou_per_horizon"]
    config = results["config"]
    lines = [f"# {title}", "", f"{config['num_sequences']} held-out sequences of {config['horizon']} steps "
             f"(kinds {', '.join(config['kinds'])}); each step is one chunk. PSNR pools the squared error of "
             "every frame of the step over the sequences.", "",
             "| horizon | " + " | ".join(str(h) for h in range(1, len(psnr['true']) + 1)) + " |",
             "|---|" + "---|" * len(psnr["true"])]
    for name, label in (("true", "model, true actions"), ("shuffled", "model, another sequence's actions"),
                        ("permuted", "model, permuted actions"), ("zeroed", "model, zeroed actions"),
                        ("repeat_start", "repeat start frame"),
                        ("truth_shuffled", "the truth, another sequence's actions")):
        lines.append(f"| PSNR: {label} (dB) | " + " | ".join(f"{v:.2f}" for v in psnr[name]) + " |")
    for name, label in (("true", "model"), ("shuffled", "model, shuffled"), ("repeat_start", "start frame's arm"),
                        ("ceiling", "classifier on the truth")):
        lines.append(f"| arm mask IoU: {label} | " + " | ".join(f"{v:.2f}" for v in masks[name]) + " |")
    lines += ["", "![arm](arm.png)", "", "Rows per sequence: truth, model (true actions), model (shuffled actions); "
              "the start frame, then each step's last frame.", "", "![strips](arm_strips.png)", "", "## Summary", "",
              "| figure | value |", "|---|---|"]
    for key, value in summary.items():
        shown = value if isinstance(value, str) else "–" if value is None else (
            f"{value:.3f}" if isinstance(value, float) else
            ", ".join(f"{v:.2f}" for v in value) if isinstance(value, list) else str(value))
        lines.append(f"| {key} | {shown} |")
    lines += ["", "Camera-only figures are n/a: the camera of the arm world never moves."]
    written["report"].write_text("\n".join(lines) + "\n")
    return written
