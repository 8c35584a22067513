"""Procedural MuJoCo scenes with exact geometry: a walled room, a textured floor, coloured objects.

Every scene is generated from its name and a seed, so the same (name, seed) always gives the
same MJCF text. Besides the MJCF, a scene records its free space in the floor plane (the
room's inner bounds and each object's footprint) so camera paths can avoid walls and objects.
The world frame is MuJoCo's: x, y on the floor, z up.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

SCENE_NAMES = ("room", "gallery", "courtyard", "pillars")

# Distinct, saturated colours for objects (RGB in [0, 1]).
PALETTE = [(0.90, 0.15, 0.15), (0.15, 0.65, 0.20), (0.15, 0.35, 0.90), (0.95, 0.80, 0.10), (0.85, 0.30, 0.85),
           (0.10, 0.80, 0.85), (0.95, 0.50, 0.10), (0.55, 0.35, 0.20), (0.95, 0.95, 0.95), (0.25, 0.25, 0.25)]
WALL_COLOURS = [(0.80, 0.72, 0.60), (0.60, 0.70, 0.80), (0.75, 0.80, 0.65), (0.85, 0.70, 0.70)]


@dataclass(frozen=True)
class Footprint:
    """An obstacle in the floor plane: a circle (radius) or an axis-aligned box (half sizes)."""

    x: float
    y: float
    radius: float = 0.0
    half_x: float = 0.0
    half_y: float = 0.0

    def distance(self, x: float, y: float) -> float:
        """Distance from (x, y) to the obstacle (negative inside)."""
        if self.radius > 0:
            return math.hypot(x - self.x, y - self.y) - self.radius
        dx, dy = abs(x - self.x) - self.half_x, abs(y - self.y) - self.half_y
        outside = math.hypot(max(dx, 0.0), max(dy, 0.0))
        return outside + min(max(dx, dy), 0.0)


@dataclass
class Scene:
    name: str
    seed: int
    xml: str
    half_extent: float  # the room's inner walls are at x, y = ±half_extent
    wall_height: float
    obstacles: list[Footprint] = field(default_factory=list)
    camera_height: float = 0.5

    def clearance(self, x: float, y: float) -> float:
        """Distance from (x, y) to the nearest wall or object."""
        walls = self.half_extent - max(abs(x), abs(y))
        return min([walls] + [o.distance(x, y) for o in self.obstacles])

    def is_free(self, x: float, y: float, margin: float = 0.25) -> bool:
        return self.clearance(x, y) >= margin


def _rgb(c) -> str:
    return f"{c[0]:.3f} {c[1]:.3f} {c[2]:.3f}"


def make_scene(name: str = "room", seed: int = 0, *, half_extent: float = 3.0, num_objects: int = 7,
               shadows: bool = False) -> Scene:
    """Build one of :data:`SCENE_NAMES` deterministically from ``seed``."""
    if name not in SCENE_NAMES:
        raise ValueError(f"unknown scene {name!r}; scenes: {list(SCENE_NAMES)}")
    rng = random.Random(f"{name}-{seed}")
    wall_height = 1.6
    floor_a, floor_b = rng.choice([((0.35, 0.35, 0.38), (0.55, 0.55, 0.58)), ((0.45, 0.38, 0.30), (0.62, 0.55, 0.45)),
                                   ((0.30, 0.40, 0.32), (0.45, 0.55, 0.46))])
    wall = WALL_COLOURS[rng.randrange(len(WALL_COLOURS))]
    checks = {"room": 8, "gallery": 12, "courtyard": 6, "pillars": 10}[name]
    parts = [
        "<mujoco model='minwm-{}'>".format(name),
        "<visual><global offwidth='64' offheight='64'/>"
        f"<quality shadowsize='{2048 if shadows else 0}'/><headlight ambient='0.35 0.35 0.35' diffuse='0.4 0.4 0.4'/></visual>",
        "<asset>",
        "<texture type='skybox' builtin='gradient' rgb1='0.55 0.65 0.85' rgb2='0.15 0.2 0.35' width='64' height='64'/>",
        f"<texture name='floor' type='2d' builtin='checker' rgb1='{_rgb(floor_a)}' rgb2='{_rgb(floor_b)}' width='256' height='256'/>",
        f"<material name='floor' texture='floor' texrepeat='{checks} {checks}' reflectance='0'/>",
        f"<texture name='wall' type='2d' builtin='gradient' rgb1='{_rgb(wall)}' rgb2='{_rgb(tuple(c * 0.6 for c in wall))}' width='64' height='64'/>",
        "<material name='wall' texture='wall' texrepeat='2 1'/>",
        "<texture name='stripes' type='2d' builtin='checker' rgb1='0.9 0.9 0.9' rgb2='0.1 0.1 0.1' width='64' height='64'/>",
        "<material name='stripes' texture='stripes' texrepeat='2 2'/>",
        "</asset>",
        "<worldbody>",
        "<light directional='true' pos='0 0 5' dir='-0.3 -0.2 -1' diffuse='0.6 0.6 0.6'/>",
        f"<geom name='floor' type='plane' size='{half_extent + 0.5} {half_extent + 0.5} 0.1' material='floor'/>",
    ]
    t = 0.1  # wall half thickness
    e = half_extent + t
    for i, (x, y, hx, hy) in enumerate([(e, 0, t, e), (-e, 0, t, e), (0, e, e, t), (0, -e, e, t)]):
        parts.append(f"<geom name='wall{i}' type='box' pos='{x} {y} {wall_height / 2}' size='{hx} {hy} {wall_height / 2}' "
                     f"material='wall'/>")
    if name == "gallery":  # framed striped panels on two walls: strong features for motion
        for i, y in enumerate((-1.5, 0.0, 1.5)):
            parts.append(f"<geom name='panel{i}' type='box' pos='{half_extent - 0.02} {y} 0.8' size='0.02 0.4 0.3' "
                         f"material='stripes'/>")
            parts.append(f"<geom name='panelb{i}' type='box' pos='{-half_extent + 0.02} {y} 0.8' size='0.02 0.4 0.3' "
                         f"rgba='{_rgb(PALETTE[(i + 3) % len(PALETTE)])} 1'/>")
    obstacles: list[Footprint] = []
    colours = rng.sample(PALETTE, k=min(num_objects, len(PALETTE)))
    placed = 0
    attempts = 0
    while placed < num_objects and attempts < 500:
        attempts += 1
        kind = "cylinder" if name == "pillars" else rng.choice(["box", "sphere", "cylinder"])
        x, y = rng.uniform(-half_extent + 0.6, half_extent - 0.6), rng.uniform(-half_extent + 0.6, half_extent - 0.6)
        if math.hypot(x, y) < 1.0:  # keep the middle open for starts
            continue
        size = rng.uniform(0.18, 0.35)
        footprint = Footprint(x, y, radius=size) if kind != "box" else Footprint(x, y, half_x=size, half_y=size)
        if any(o.distance(x, y) < size + 0.5 for o in obstacles):
            continue
        colour = colours[placed % len(colours)]
        if kind == "box":
            height = rng.uniform(0.2, 0.6)
            parts.append(f"<geom name='obj{placed}' type='box' pos='{x:.3f} {y:.3f} {height:.3f}' "
                         f"size='{size:.3f} {size:.3f} {height:.3f}' rgba='{_rgb(colour)} 1'/>")
        elif kind == "sphere":
            parts.append(f"<geom name='obj{placed}' type='sphere' pos='{x:.3f} {y:.3f} {size:.3f}' size='{size:.3f}' "
                         f"rgba='{_rgb(colour)} 1'/>")
        else:
            height = rng.uniform(0.3, 0.8) if name != "pillars" else wall_height / 2
            parts.append(f"<geom name='obj{placed}' type='cylinder' pos='{x:.3f} {y:.3f} {height:.3f}' "
                         f"size='{size:.3f} {height:.3f}' rgba='{_rgb(colour)} 1'/>")
        obstacles.append(footprint)
        placed += 1
    parts.append("<camera name='minwm' pos='0 0 0.5' xyaxes='1 0 0 0 0 1' fovy='60'/>")
    parts += ["</worldbody>", "</mujoco>"]
    return Scene(name, seed, "\n".join(parts), half_extent, wall_height, obstacles)
