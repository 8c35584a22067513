"""Tasks with one definition in both worlds: rewards and ends from the commanded pose and the layout.

A task sees only what it can know the same way in ``minwm/World-v0`` and in
``minwm/GroundTruth-v0``: the scene layout the episode starts in (its exact geometry, from
:func:`minwm_env.world.scenes.make_scene`), the start pose in that layout, and the camera
moves the agent commanded since. Rewards, successes and episode ends are a function of these
alone (:meth:`Task.advance`), so the same layout, start and move sequence give the same
numbers in the world model and in the truth. The policy never sees any of it: it acts from
the decoded frames.

Moves are minWM's key steps, held for a whole step (one chunk = 4 latent frames):
``forward`` 0.08 units a latent frame (0.32 a step), ``left`` / ``right`` 3° a latent frame
(12° a step), ``stop`` ends the episode where the task has one.

Tasks (:data:`TASKS`):

``reach``
    Start 1.5–4 units from an object seen 15–28° off the heading (left or right), with it
    the object nearest the image centre. Succeed by coming within 0.6 units of its surface
    facing it within 15° (walking straight on never does: the object must be turned to).
    Moves: forward, left, right; 30 steps.
``face``
    Start anywhere with a clear line of sight to the object of one colour (``colour``,
    default red; layouts without that colour are not used), at least 30° away from facing
    it. Turn and ``stop`` facing it within 10°. Moves: left, right, stop; 20 steps.
``stop_in_front``
    Start 1.2–3.5 units from an object seen within 20° of the heading, the object nearest
    the image centre; ``stop`` 0.3–0.9 units from the object's surface, facing it
    within 20°. Moves: forward, left, right, stop; 30 steps.

In every task, coming closer than 0.25 units to any wall or object ends the episode as a
collision (the truth blocks moves at 0.2, so up to the end of an episode the true camera is
exactly where the commands put it). Rewards: +1 on success, −0.5 on a collision, −0.25 for a
stop that does not succeed, −0.01 a step, plus the change of a task potential (−0.25 × the
distance to go and the heading error beyond what succeeds, in degrees / 180 (× 0.5 for
``reach``), the heading error / 180° alone for ``face``), so a straight solution earns about 1–2.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from .. import camera
from ..pose_strings import KEY_DELTAS
from ..world.renderer import look_pose
from ..world.scenes import PALETTE, SCENE_NAMES, Footprint, Scene, make_scene

COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "brown", "white", "black")
MOVE_KEYS = {"forward": "w", "left": "j", "right": "l", "stop": "stay"}
COLLISION_MARGIN = 0.25  # the truth blocks a move at clearance 0.2 (GroundTruthEnv._free)
STEP_COST, SUCCESS_REWARD, COLLISION_REWARD, BAD_STOP_REWARD = 0.01, 1.0, -0.5, -0.25
FOV_HALF_DEG = 30.0  # the 64×64 frames' half field of view (60°, square pixels)


def move_delta(move: str) -> np.ndarray:
    """The camera delta of ``move`` per latent frame, as the envs receive it (float32)."""
    return np.asarray(KEY_DELTAS[MOVE_KEYS[move]], dtype=np.float32)


@lru_cache(maxsize=None)
def _move_matrix(move: str) -> np.ndarray:
    # float32 → float64 exactly as the envs read an action (ActionSpec.validate), so the tracked
    # pose is the truth's own pose to the last bit while nothing blocks it
    return camera.delta_to_matrix(torch.from_numpy(move_delta(move)).double()).numpy()


# -- layouts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneObject:
    index: int
    kind: str  # box, sphere, cylinder
    colour: str  # one of COLOUR_NAMES
    rgb: tuple[float, float, float]
    footprint: Footprint

    @property
    def xy(self) -> tuple[float, float]:
        return self.footprint.x, self.footprint.y


@dataclass(frozen=True)
class Layout:
    """One scene layout: the scene (MJCF and free space) and its objects with their colours."""

    scene: Scene
    objects: tuple[SceneObject, ...]

    @property
    def seed(self) -> int:
        return self.scene.seed

    def colours(self) -> set[str]:
        return {o.colour for o in self.objects}


@lru_cache(maxsize=256)
def load_layout(scene: str, seed: int) -> Layout:
    """The layout ``seed`` of scene ``scene``: the geometry both worlds are built from."""
    if scene not in SCENE_NAMES:
        raise ValueError(f"unknown scene {scene!r}; scenes: {list(SCENE_NAMES)}")
    made = make_scene(scene, int(seed))
    geoms = [g for g in ET.fromstring(made.xml).iter("geom") if re.fullmatch(r"obj\d+", g.get("name", ""))]
    geoms.sort(key=lambda g: int(g.get("name")[3:]))
    if len(geoms) != len(made.obstacles):
        raise RuntimeError(f"scene {scene}/{seed}: {len(geoms)} object geoms for {len(made.obstacles)} footprints")
    objects = []
    for i, (geom, footprint) in enumerate(zip(geoms, made.obstacles)):
        rgb = tuple(float(v) for v in geom.get("rgba").split()[:3])
        nearest = min(range(len(PALETTE)), key=lambda k: sum((a - b) ** 2 for a, b in zip(PALETTE[k], rgb)))
        objects.append(SceneObject(i, geom.get("type"), COLOUR_NAMES[nearest], rgb, footprint))
    return Layout(made, tuple(objects))


def parse_layouts(text: str | list | tuple | range) -> list[int]:
    """``"0-15"``, ``"0,3,7-9"`` or a list of ints → sorted distinct layout seeds."""
    if isinstance(text, (list, tuple, range)):
        seeds = [int(s) for s in text]
    else:
        seeds = []
        for part in str(text).split(","):
            part = part.strip()
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if match is None:
                raise ValueError(f"cannot read layouts {text!r}: expected seeds like '0-15' or '0,3,7-9', "
                                 f"got the part {part!r}")
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            if high < low:
                raise ValueError(f"layout range {part!r} runs backwards")
            seeds.extend(range(low, high + 1))
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"layouts must be one or more seeds >= 0, got {text!r}")
    return sorted(set(seeds))


# -- planar geometry of a pose -----------------------------------------------------------------

def heading_deg(c2w: np.ndarray) -> float:
    """Heading of the camera's forward axis in the floor plane (0° = +x, counter-clockwise)."""
    return math.degrees(math.atan2(c2w[1, 2], c2w[0, 2]))


def wrap_deg(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


def bearing_deg(c2w: np.ndarray, xy: tuple[float, float]) -> float:
    """Angle from the camera's heading to the point ``xy``, in (−180°, 180°] (+: to the left)."""
    return wrap_deg(math.degrees(math.atan2(xy[1] - c2w[1, 3], xy[0] - c2w[0, 3])) - heading_deg(c2w))


def surface_distance(c2w: np.ndarray, obj: SceneObject) -> float:
    return obj.footprint.distance(float(c2w[0, 3]), float(c2w[1, 3]))


def line_of_sight(layout: Layout, xy: tuple[float, float], target: SceneObject, clearance: float = 0.1) -> bool:
    """No other object's footprint within ``clearance`` of the segment from ``xy`` to the target."""
    end = np.array(target.xy)
    start = np.array(xy, dtype=np.float64)
    for t in np.linspace(0.0, 1.0, 41):
        x, y = start + t * (end - start)
        if target.footprint.distance(x, y) < 0:
            break
        if any(o.footprint.distance(x, y) < clearance for o in layout.objects if o.index != target.index):
            return False
    return True


# -- episodes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Episode:
    """Where an episode starts: a layout, a start pose in it (OpenCV c2w, world frame), a target."""

    scene: str
    layout: int
    start: np.ndarray
    target: int


@dataclass
class EpisodeState:
    """An episode under way: the commanded pose relative to the start, and the running sums."""

    task: "Task"
    episode: Episode
    layout: Layout
    chunk_frames: int = 4
    pose: np.ndarray = field(default_factory=lambda: np.eye(4))
    steps: int = 0
    total_reward: float = 0.0
    potential: float = 0.0
    done: bool = False
    success: bool = False
    event: str | None = None

    def __post_init__(self):
        self.potential = self.task.potential(self.layout, self.target, self.world_pose())

    @property
    def target(self) -> SceneObject:
        return self.layout.objects[self.episode.target]

    def world_pose(self) -> np.ndarray:
        return self.episode.start @ self.pose

    def summary(self) -> dict:
        return {"layout": self.episode.layout, "target": self.episode.target, "target_colour": self.target.colour,
                "steps": self.steps, "return": self.total_reward, "success": self.success,
                "event": self.event or "timeout"}


@dataclass(frozen=True)
class Outcome:
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    event: str | None  # success, collision, bad_stop, or None


class Task:
    """One task: its moves, how episodes start, and its reward — a function of layout, start and moves."""

    name = ""
    moves: tuple[str, ...] = ()
    max_steps = 30
    options: tuple[str, ...] = ()

    def __init__(self, max_steps: int | None = None):
        if max_steps is not None:
            if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
                raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
            self.max_steps = max_steps

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in self.options)
        return f"{type(self).__name__}(max_steps={self.max_steps}{extra})"

    def describe(self) -> dict:
        return {"task": self.name, "moves": list(self.moves), "max_steps": self.max_steps,
                **{k: getattr(self, k) for k in self.options}}

    # what a subclass defines
    def usable(self, layout: Layout) -> bool:
        return len(layout.objects) > 0

    def sample(self, scene: str, layout: Layout, rng: np.random.Generator) -> Episode:
        raise NotImplementedError

    def potential(self, layout: Layout, target: SceneObject, c2w: np.ndarray) -> float:
        return 0.0

    def reached(self, layout: Layout, target: SceneObject, c2w: np.ndarray) -> bool:
        """Success on arrival, without a stop (``reach``)."""
        return False

    def stop_succeeds(self, layout: Layout, target: SceneObject, c2w: np.ndarray) -> bool:
        return False

    # shared
    def start(self, episode: Episode, chunk_frames: int = 4) -> EpisodeState:
        return EpisodeState(self, episode, load_layout(episode.scene, episode.layout), chunk_frames)

    def check_action(self, action) -> str:
        array = np.asarray(action)
        if array.shape not in ((), (1,)) or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"task {self.name!r} takes one integer move index, got {action!r}")
        index = int(array.reshape(-1)[0])
        if not 0 <= index < len(self.moves):
            raise ValueError(f"move index {index} is outside [0, {len(self.moves)}) for moves {list(self.moves)}")
        return self.moves[index]

    def advance(self, state: EpisodeState, action) -> Outcome:
        """One step of ``state`` under move index ``action``: moves the commanded pose latent
        frame by latent frame (the envs' own order) and scores it."""
        if state.done:
            raise RuntimeError("this episode has ended; start a new one")
        move = self.check_action(action)
        state.steps += 1
        reward, event = -STEP_COST, None
        if move == "stop":
            ok = self.stop_succeeds(state.layout, state.target, state.world_pose())
            event = "success" if ok else "bad_stop"
            reward += SUCCESS_REWARD if ok else BAD_STOP_REWARD
        else:
            step = _move_matrix(move)
            for _ in range(state.chunk_frames):
                state.pose = state.pose @ step
                world = state.world_pose()
                if state.layout.scene.clearance(float(world[0, 3]), float(world[1, 3])) < COLLISION_MARGIN:
                    event, reward = "collision", reward + COLLISION_REWARD
                    break
                if self.reached(state.layout, state.target, world):
                    event, reward = "success", reward + SUCCESS_REWARD
                    break
        potential = self.potential(state.layout, state.target, state.world_pose())
        reward += potential - state.potential
        state.potential = potential
        terminated = event is not None
        truncated = not terminated and state.steps >= self.max_steps
        state.total_reward += reward
        state.success = event == "success"
        state.event = event
        state.done = terminated or truncated
        return Outcome(reward, terminated, truncated, state.success, event)


def _facing_start(task: Task, scene: str, layout: Layout, rng: np.random.Generator, offsets_deg=(0.0, 20.0),
                  distances=(1.2, 3.5)) -> Episode:
    """A start ``distances`` from an object's surface, the object ``offsets_deg`` off the
    heading (either side: in view), a clear way to it (0.3 units from any other object), and
    no other object nearer the image centre than it by less than 10°."""
    objects = layout.objects
    for _ in range(2000):
        target = objects[int(rng.integers(len(objects)))]
        fp = target.footprint
        reach = fp.radius if fp.radius > 0 else max(fp.half_x, fp.half_y)
        angle = rng.uniform(0.0, 2 * math.pi)
        radius = reach + rng.uniform(*distances)
        x, y = fp.x + radius * math.cos(angle), fp.y + radius * math.sin(angle)
        if not distances[0] <= fp.distance(x, y) <= distances[1] or layout.scene.clearance(x, y) < 0.6:
            continue
        if not line_of_sight(layout, (x, y), target, clearance=0.3):
            continue
        to_target = math.degrees(math.atan2(fp.y - y, fp.x - x))
        offset = rng.uniform(*offsets_deg) * (1 if rng.random() < 0.5 else -1)
        start = look_pose(x, y, layout.scene.camera_height, to_target + offset)
        own = abs(bearing_deg(start, target.xy))
        others = [abs(bearing_deg(start, o.xy)) for o in objects if o.index != target.index]
        if any(b < own + 10.0 for b in others if b < FOV_HALF_DEG + 10.0):
            continue
        return Episode(scene, layout.seed, start, target.index)
    raise RuntimeError(f"no start facing an object found in {scene} layout {layout.seed} for task {task.name!r}")


class Reach(Task):
    name = "reach"
    moves = ("forward", "left", "right")
    max_steps = 30
    success_distance = 0.6
    max_bearing_deg = 15.0

    def sample(self, scene, layout, rng):
        # off by 15-28°: walking straight on never faces it within 15° (the angle only grows)
        return _facing_start(self, scene, layout, rng, offsets_deg=(15.0, 28.0), distances=(1.5, 4.0))

    def potential(self, layout, target, c2w):
        off = max(abs(bearing_deg(c2w, target.xy)) - self.max_bearing_deg, 0.0)
        return -0.25 * surface_distance(c2w, target) - 0.5 * off / 180.0

    def reached(self, layout, target, c2w):
        return (surface_distance(c2w, target) <= self.success_distance
                and abs(bearing_deg(c2w, target.xy)) <= self.max_bearing_deg)


class StopInFront(Task):
    name = "stop_in_front"
    moves = ("forward", "left", "right", "stop")
    max_steps = 30
    band = (0.3, 0.9)
    max_bearing_deg = 20.0

    def sample(self, scene, layout, rng):
        return _facing_start(self, scene, layout, rng)

    def potential(self, layout, target, c2w):
        far = max(surface_distance(c2w, target) - self.band[1], 0.0)
        off = max(abs(bearing_deg(c2w, target.xy)) - self.max_bearing_deg, 0.0)
        return -0.25 * far - off / 180.0

    def stop_succeeds(self, layout, target, c2w):
        return (self.band[0] <= surface_distance(c2w, target) <= self.band[1]
                and abs(bearing_deg(c2w, target.xy)) <= self.max_bearing_deg)


class Face(Task):
    name = "face"
    moves = ("left", "right", "stop")
    max_steps = 20
    options = ("colour",)
    max_bearing_deg = 10.0

    def __init__(self, max_steps: int | None = None, colour: str = "red"):
        super().__init__(max_steps)
        if colour not in COLOUR_NAMES:
            raise ValueError(f"unknown colour {colour!r} for task 'face'; colours: {list(COLOUR_NAMES)}")
        self.colour = colour

    def usable(self, layout):
        return self.colour in layout.colours()

    def sample(self, scene, layout, rng):
        target = next(o for o in layout.objects if o.colour == self.colour)
        half = layout.scene.half_extent
        for _ in range(2000):
            x, y = rng.uniform(-half, half), rng.uniform(-half, half)
            if layout.scene.clearance(x, y) < 0.7 or target.footprint.distance(x, y) < 0.8:
                continue
            if not line_of_sight(layout, (x, y), target):
                continue
            start = look_pose(x, y, layout.scene.camera_height, rng.uniform(0.0, 360.0))
            if abs(bearing_deg(start, target.xy)) < 30.0:
                continue
            return Episode(scene, layout.seed, start, target.index)
        raise RuntimeError(f"no start with a view of the {self.colour} object in {scene} layout {layout.seed}")

    def potential(self, layout, target, c2w):
        return -abs(bearing_deg(c2w, target.xy)) / 180.0

    def stop_succeeds(self, layout, target, c2w):
        return abs(bearing_deg(c2w, target.xy)) <= self.max_bearing_deg


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Reach, Face, StopInFront)}


def make_task(name: str | Task, **options) -> Task:
    """``make_task("face", colour="blue")``; unknown names or options raise and list the known ones."""
    if isinstance(name, Task):
        if options:
            raise ValueError("options go with a task name, not with a Task instance")
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    known = ("max_steps",) + cls.options
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise ValueError(f"task {name!r} has no option(s) {unknown}; its options: {list(known)}")
    return cls(**{k: v for k, v in options.items() if v is not None})


def usable_layouts(task: Task, scene: str, layouts: list[int]) -> list[int]:
    """The layouts among ``layouts`` where ``task`` can start (``face`` needs its colour)."""
    usable = [s for s in layouts if task.usable(load_layout(scene, s))]
    if not usable:
        raise ValueError(f"task {task!r} cannot start in any of {scene} layouts {layouts}")
    return usable


def episode_plan(task: Task, scene: str, layouts: list[int], count: int, seed: int) -> list[Episode]:
    """``count`` fixed episodes for scoring: episode i on layout ``layouts[i % n]``, drawn from (seed, i)."""
    layouts = usable_layouts(task, scene, layouts)
    return [task.sample(scene, load_layout(scene, layouts[i % len(layouts)]), np.random.default_rng([seed, i]))
            for i in range(count)]
