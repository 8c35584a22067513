"""What ``minwm-agents`` writes: the results table, the learning curves and the video."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .tasks import load_layout

LABELS = {"world_model": "PPO trained in the world model", "truth": "PPO trained in the truth",
          "random": "random moves"}
TRAINED_IN = {"world_model": "minwm/World-v0", "truth": "minwm/GroundTruth-v0", "random": "—"}
SCORED_IN = {"truth": "truth (held-out layouts)", "model": "world model (held-out layouts)"}


def _fmt(value, digits=2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_tables(out: Path, results: dict) -> None:
    """``results.md``: one row per (policy, world it is scored in)."""
    header = ("| policy | trained in | env steps | train CPU time (s) | train wall time (s) | env steps/s in rollouts "
              "| scored in | success rate | mean return | mean length | collisions | episodes |")
    lines = [f"# Agents on task `{results['task']['task']}`", "",
             f"Task {json.dumps(results['task'])}; scene `{results['scene']}`, trained on layouts "
             f"{_ranges(results['train_layouts'])}, scored on held-out layouts {_ranges(results['eval_layouts'])}; "
             f"world model `{results['model']}`; {results['processes']} process(es) x {results['rows_per_process']} "
             "env rows.", "", header, "|" + "---|" * 12]
    for key, score in results["scores"].items():
        agent, world = key.split("@")
        train = results["training"].get(agent)
        steps = train["num_timesteps"] if train else 0
        cpu = train["cpu_s"] - train["eval_cpu_s"] if train else None
        wall = train["wall_s"] - train["eval_s"] if train else None
        rate = train["rollout_steps"] / train["rollout_s"] if train and train["rollout_s"] > 0 else None
        lines.append(f"| {LABELS[agent]} | {TRAINED_IN[agent]} | {steps} | {_fmt(cpu, 0)} | {_fmt(wall, 0)} | "
                     f"{_fmt(rate, 1)} | {SCORED_IN[world]} | {_fmt(score['success_rate'])} | "
                     f"{_fmt(score['mean_return'])} | {_fmt(score['mean_length'], 1)} | "
                     f"{score['events']['collision']} | {score['episodes']} |")
    lines += ["", "CPU and wall times are of training alone (scores during training taken out); env steps/s counts "
              "the rollouts' env steps and policy forward passes, not the PPO updates. Every policy plays the same "
              "episodes (layout, start pose, target) of each world.", ""]
    (out / "results.md").write_text("\n".join(lines))


def _ranges(seeds: list[int]) -> str:
    parts, start = [], None
    for i, seed in enumerate(seeds):
        if start is None:
            start = seed
        if i + 1 == len(seeds) or seeds[i + 1] != seed + 1:
            parts.append(str(start) if start == seed else f"{start}–{seed}")
            start = None
    return ", ".join(parts)


def _rolling(values: list[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(values) + 1) - window, 0)]) / counts


def plot_curves(out: Path, agents: tuple[str, ...], random_score: dict | None) -> None:
    """``curves.png``: success rate and return against env steps, per agent: its training
    episodes (rolling mean over 100, in the world it trains in) and its scores in the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"world_model": "tab:blue", "truth": "tab:orange"}
    for agent in agents:
        if agent not in colours:
            continue
        folder = out / agent
        episodes = [json.loads(line) for line in _lines(folder / "train_episodes.jsonl")]
        evals = [json.loads(line) for line in _lines(folder / "eval_curve.jsonl")]
        where = "world model" if agent == "world_model" else "truth"
        for ax, key, ekey in ((axes[0], "success", "success_rate"), (axes[1], "return", "mean_return")):
            if episodes:
                ax.plot([e["step"] for e in episodes], _rolling([float(e[key]) for e in episodes], 100),
                        color=colours[agent], alpha=0.45, linestyle="--",
                        label=f"{LABELS[agent]}: training episodes ({where})")
            if evals:
                ax.plot([e["step"] for e in evals], [e[ekey] for e in evals], color=colours[agent], marker="o",
                        label=f"{LABELS[agent]}: scored in the truth, held-out")
    if random_score is not None:
        for ax, key in ((axes[0], "success_rate"), (axes[1], "mean_return")):
            ax.axhline(random_score[key], color="grey", linestyle=":", label="random moves, truth, held-out")
    axes[0].set_ylabel("success rate")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("mean return")
    for ax in axes:
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# -- video ---------------------------------------------------------------------------------------

def draw_map(scene: str, layout_seed: int, target: int, poses: list[np.ndarray], size: int = 256) -> np.ndarray:
    """Top-down view of a layout: walls, objects in their colours (the target ringed in white),
    the camera's path so far and its heading."""
    import cv2

    layout = load_layout(scene, layout_seed)
    half = layout.scene.half_extent
    scale = size / (2 * half + 0.4)

    def px(x, y):
        return int(round((x + half + 0.2) * scale)), int(round((half + 0.2 - y) * scale))

    image = np.full((size, size, 3), 40, np.uint8)
    cv2.rectangle(image, px(-half, half), px(half, -half), (150, 150, 150), -1)
    for obj in layout.objects:
        fp = obj.footprint
        colour = tuple(int(c * 255) for c in obj.rgb)
        if fp.radius > 0:
            cv2.circle(image, px(fp.x, fp.y), max(2, int(fp.radius * scale)), colour, -1)
        else:
            cv2.rectangle(image, px(fp.x - fp.half_x, fp.y + fp.half_y), px(fp.x + fp.half_x, fp.y - fp.half_y),
                          colour, -1)
        if obj.index == target:
            reach = fp.radius if fp.radius > 0 else math.hypot(fp.half_x, fp.half_y)
            cv2.circle(image, px(fp.x, fp.y), int(reach * scale) + 5, (255, 255, 255), 2)
    path = np.array([px(p[0, 3], p[1, 3]) for p in poses], np.int32)
    if len(path) > 1:
        cv2.polylines(image, [path.reshape(-1, 1, 2)], False, (20, 20, 20), 2)
    last = poses[-1]
    tip = px(last[0, 3] + 0.5 * last[0, 2], last[1, 3] + 0.5 * last[1, 2])
    cv2.arrowedLine(image, px(last[0, 3], last[1, 3]), tip, (0, 0, 0), 2, tipLength=0.35)
    cv2.circle(image, px(last[0, 3], last[1, 3]), 5, (255, 255, 255), -1)
    return image


def write_video(path: Path, recordings: list[dict], scene: str, fps: int = 16, hold: int = 12) -> None:
    """Each recorded episode: the agent's frames (4x) beside the map, a caption above."""
    import cv2
    import imageio.v2 as imageio

    canvas_frames = []
    for number, recording in enumerate(recordings):
        episode, summary = recording["episode"], recording["summary"] or {}
        layout = load_layout(scene, episode.layout)
        colour = layout.objects[episode.target].colour
        result = summary.get("event", "")
        frames, poses = recording["frames"], recording["poses"]
        frames = [frames[0]] * hold + list(frames) + [frames[-1]] * hold
        poses = [poses[0]] * hold + list(poses) + [poses[-1]] * hold
        for k, (frame, _) in enumerate(zip(frames, poses)):
            view = cv2.resize(frame, (256, 256), interpolation=cv2.INTER_NEAREST)
            canvas = np.zeros((288, 512, 3), np.uint8)
            canvas[32:, :256] = view
            canvas[32:, 256:] = draw_map(scene, episode.layout, episode.target, poses[:k + 1])
            text = f"episode {number + 1}: layout {episode.layout}, target {colour}"
            if k >= len(frames) - hold and result:
                text += f" -> {result}"
            cv2.putText(canvas, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            canvas_frames.append(canvas)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    imageio.mimwrite(tmp, canvas_frames, fps=fps, macro_block_size=16)
    tmp.replace(path)
