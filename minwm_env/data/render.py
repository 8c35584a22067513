"""Clips of the ground-truth worlds: random scenes and collision-free camera paths, or a robot arm.

    minwm-data render --out data/world --num-clips 1000 --num-frames 81 --height 64 --width 64
    minwm-data render --world arm --out data/arm --num-clips 1000 --num-frames 81

Clip ``i`` is fully determined by ``(seed, i)``: its scene, scene variant, path kind and path
seed are drawn from a generator seeded with both, so a rerun (or a resumed run) gives the same
clip ``i`` whatever else changed in the run. The per-latent-frame actions are the path's camera
deltas ``[dx, dy, dz, yaw, pitch, roll]`` (:func:`minwm_env.conditioning.camera_action_spec`),
and the path's minWM pose string is stored with them.

``world="arm"`` renders :mod:`minwm_env.world.arm` instead: a fixed camera watches the Pusher
arm, driven by one of the ``arm_kinds`` action sequences (:func:`~minwm_env.world.arm.arm_actions`).
Every pose is the identity, the intrinsics are the fixed camera's, and the actions are the
per-latent-frame joint-target deltas (action spec ``"pusher-arm"``,
:func:`~minwm_env.world.arm.arm_action_spec`); there is no pose string. Clip ``i`` depends only
on ``(seed, i)`` here too. ``push`` clips start with the scoop raised near the puck, so clips
of 25 frames or more usually push it (9 in 10 from 33 frames; 17-frame clips about 1 in 3).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..cli import arg
from ..world.arm import ARM_ACTION_KINDS, ARM_ACTION_SPEC_NAME, ArmWorld, arm_actions, ready_joint_angles
from ..world.paths import PATH_KINDS, random_path, rgb_frame_poses
from ..world.renderer import WorldRenderer
from ..world.scenes import SCENE_NAMES, make_scene
from .format import PIXEL_FORMATS, TEMPORAL_FACTOR, ClipPoses, DatasetWriter, check_num_frames

CAMERA_ACTION_SPEC = "camera"  # minwm_env.conditioning.camera_action_spec
WORLDS = ("camera", "arm")
# Settings that only one world reads: left out of the other world's dataset origin, so a camera
# dataset made before the arm world existed is continued as before.
_CAMERA_ONLY = ("scenes", "num_scene_seeds", "path_kinds", "fov_y_deg")
_ARM_ONLY = ("world", "arm_kinds")


@dataclass
class RenderConfig:
    """Render clips of the ground-truth MuJoCo world."""

    num_clips: int = arg(8, "number of clips")
    num_frames: int = arg(17, "RGB frames per clip, 1 + 4k")
    height: int = arg(64, "frame height in pixels")
    width: int = arg(64, "frame width in pixels")
    fov_y_deg: float = arg(60.0, "vertical field of view in degrees")
    fps: float = arg(16.0, "frame rate stored in the videos")
    scenes: tuple[str, ...] = arg(SCENE_NAMES, "scenes to draw from", choices=SCENE_NAMES)
    num_scene_seeds: int = arg(100, "variants per scene: scene seeds are drawn from 0..num_scene_seeds-1")
    path_kinds: tuple[str, ...] = arg(PATH_KINDS, "camera path kinds to draw from", choices=PATH_KINDS)
    seed: int = arg(0, "dataset seed: clip i depends only on (seed, i)")
    quality: int = arg(9, "H.264 quality 0..10 (libx264 CRF = 51 * (1 - quality / 10))")
    pixel_format: str = arg("yuv444p", "video pixel format (yuv420p plays everywhere but blurs colour)",
                            choices=PIXEL_FORMATS)
    world: str = arg("camera", "what the actions move: 'camera' walks a camera through random scenes; 'arm' "
                     "moves a robot arm pushing a puck, seen by a fixed camera (it ignores --scenes, "
                     "--num-scene-seeds, --path-kinds and --fov-y-deg)", choices=WORLDS)
    arm_kinds: tuple[str, ...] = arg(ARM_ACTION_KINDS, "arm action kinds to draw from (--world arm)",
                                     choices=ARM_ACTION_KINDS)

    def __post_init__(self):
        check_num_frames(self.num_frames)
        if self.num_clips < 0 or self.num_scene_seeds < 1:
            raise ValueError(f"num_clips must be >= 0 and num_scene_seeds >= 1, got {self.num_clips}, "
                             f"{self.num_scene_seeds}")
        if not self.scenes or not self.path_kinds:
            raise ValueError("scenes and path_kinds must each name at least one choice")
        self.scenes, self.path_kinds = tuple(self.scenes), tuple(self.path_kinds)
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {WORLDS}, got {self.world!r}")
        self.arm_kinds = tuple(self.arm_kinds)
        unknown = [kind for kind in self.arm_kinds if kind not in ARM_ACTION_KINDS]
        if not self.arm_kinds or unknown:
            raise ValueError(f"arm_kinds must name at least one of {ARM_ACTION_KINDS}, got {list(self.arm_kinds)}")

    def origin_settings(self) -> dict:
        """The settings a dataset's origin records: all but ``num_clips`` (clip i depends on
        (seed, i) only) and those the chosen world does not read."""
        drop = ("num_clips",) + (_ARM_ONLY if self.world == "camera" else _CAMERA_ONLY)
        return {k: v for k, v in asdict(self).items() if k not in drop}


@dataclass(frozen=True)
class ClipPlan:
    """What clip ``index`` of a rendered dataset shows."""

    index: int
    scene: str
    scene_seed: int
    path_kind: str
    path_seed: int

    @property
    def clip_id(self) -> str:
        return f"{self.index:06d}"


def plan_clip(config: RenderConfig, index: int) -> ClipPlan:
    rng = random.Random(f"minwm-render-{config.seed}-{index}")
    return ClipPlan(index, rng.choice(config.scenes), rng.randrange(config.num_scene_seeds),
                    rng.choice(config.path_kinds), rng.randrange(2 ** 31))


def render_clip(plan: ClipPlan, config: RenderConfig, renderer: WorldRenderer | None = None
                ) -> tuple[np.ndarray, ClipPoses]:
    """Frames (T, H, W, 3) uint8 and the poses of one planned clip."""
    scene = make_scene(plan.scene, plan.scene_seed)
    if renderer is None:
        renderer = WorldRenderer(scene, config.width, config.height, config.fov_y_deg)
    num_latent_frames = (config.num_frames - 1) // TEMPORAL_FACTOR + 1
    path = random_path(scene, num_latent_frames, plan.path_kind, plan.path_seed)
    rgb_c2w = rgb_frame_poses(path.relative_c2w(), TEMPORAL_FACTOR).numpy()  # (T, 4, 4), rgb_c2w[0] = I
    frames = renderer.render_many(path.start_c2w @ rgb_c2w)
    poses = ClipPoses(rgb_c2w, renderer.intrinsics, path.deltas.numpy(), path.pose_string)
    return frames, poses


@dataclass(frozen=True)
class ArmClipPlan:
    """What clip ``index`` of a rendered arm dataset shows."""

    index: int
    kind: str
    world_seed: int  # the start: arm pose, puck and goal
    action_seed: int

    @property
    def clip_id(self) -> str:
        return f"{self.index:06d}"


def plan_arm_clip(config: RenderConfig, index: int) -> ArmClipPlan:
    rng = random.Random(f"minwm-render-arm-{config.seed}-{index}")
    return ArmClipPlan(index, rng.choice(config.arm_kinds), rng.randrange(2 ** 31), rng.randrange(2 ** 31))


def render_arm_clip(plan: ArmClipPlan, config: RenderConfig, world: ArmWorld | None = None
                    ) -> tuple[np.ndarray, ClipPoses]:
    """Frames (T, H, W, 3) uint8 and the poses (identities, fixed intrinsics, joint-target
    actions) of one planned arm clip. ``world`` may be reused between clips: each clip resets it."""
    if world is None:
        world = ArmWorld(config.width, config.height)
    rng = np.random.default_rng(plan.world_seed)
    if plan.kind == "push":
        object_xy = world.random_object_xy(rng)
        world.reset(rng, joint_angles=ready_joint_angles(rng, object_xy), object_xy=object_xy)
    else:
        world.reset(rng)
    num_latent_frames = (config.num_frames - 1) // TEMPORAL_FACTOR + 1
    actions = arm_actions(plan.kind, num_latent_frames, plan.action_seed, world)
    frames = np.concatenate([world.render()[None]] + [world.apply(row, TEMPORAL_FACTOR) for row in actions])
    identity = np.repeat(np.eye(4)[None], frames.shape[0], axis=0)  # the camera never moves
    poses = ClipPoses(identity, world.intrinsics, actions if len(actions) else None, None)
    return frames, poses


def _render_arm_dataset(writer: DatasetWriter, config: RenderConfig, progress: bool) -> None:
    todo = [plan_arm_clip(config, i) for i in range(config.num_clips)]
    todo = [plan for plan in todo if not writer.has(plan.clip_id)]
    world = None
    try:
        for plan in tqdm(todo, desc="render arm", unit="clip", disable=not progress):
            if world is None:
                world = ArmWorld(config.width, config.height)
            frames, poses = render_arm_clip(plan, config, world)
            source = f"render world=arm kind={plan.kind} world_seed={plan.world_seed} action_seed={plan.action_seed}"
            writer.add(plan.clip_id, frames, poses, config.fps, source, ARM_ACTION_SPEC_NAME, config.quality,
                       config.pixel_format)
    finally:
        if world is not None:
            world.close()


def render_dataset(out: str | Path, config: RenderConfig, progress: bool = True) -> Path:
    """Render clips ``0 .. config.num_clips - 1`` into ``out``. A folder made with the same settings
    is continued: clips already there are kept, so a larger ``num_clips`` extends a dataset."""
    origin = {"command": "render", "config": config.origin_settings()}
    if config.world == "arm":
        with DatasetWriter(out, origin) as writer:
            _render_arm_dataset(writer, config, progress)
        return Path(out)
    with DatasetWriter(out, origin) as writer:
        todo = [plan_clip(config, i) for i in range(config.num_clips)]
        todo = [plan for plan in todo if not writer.has(plan.clip_id)]
        # Building a renderer costs more than rendering a short clip: render scene by scene.
        todo.sort(key=lambda plan: (plan.scene, plan.scene_seed, plan.index))
        renderer, renderer_key = None, None
        try:
            for plan in tqdm(todo, desc="render", unit="clip", disable=not progress):
                if (plan.scene, plan.scene_seed) != renderer_key:
                    if renderer is not None:
                        renderer.close()
                    renderer = WorldRenderer(make_scene(plan.scene, plan.scene_seed), config.width, config.height,
                                             config.fov_y_deg)
                    renderer_key = (plan.scene, plan.scene_seed)
                frames, poses = render_clip(plan, config, renderer)
                source = (f"render scene={plan.scene} scene_seed={plan.scene_seed} path={plan.path_kind} "
                          f"path_seed={plan.path_seed}")
                writer.add(plan.clip_id, frames, poses, config.fps, source, CAMERA_ACTION_SPEC, config.quality,
                           config.pixel_format)
        finally:
            if renderer is not None:
                renderer.close()
    return Path(out)
