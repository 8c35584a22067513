"""Headless MuJoCo rendering from any camera pose, at any resolution, deterministically.

Poses are OpenCV camera-to-world matrices in MuJoCo's world frame (x, y on the floor, z up).
MuJoCo cameras look along −z with y up; the conversion happens here and nowhere else:
``R_mujoco = R_opencv · diag(1, −1, −1)``.

Rendering uses ``MUJOCO_GL=egl`` by default (Mesa's llvmpipe on a CPU-only machine); set
``MUJOCO_GL`` before the first render to choose another back end.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .scenes import Scene

CAMERA_NAME = "minwm"
OPENCV_TO_MUJOCO = np.diag([1.0, -1.0, -1.0])
# Semantic classes of :meth:`WorldRenderer.render_labels`, by index: what a pixel shows. Our
# scenes name their geoms (floor, wall*, panel*, obj*); in a user's MJCF a plane is floor and
# any other geom an object of its shape.
LABELS = ("sky", "floor", "wall", "panel", "box", "sphere", "cylinder", "other")


def _import_mujoco():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("the ground-truth world needs MuJoCo: pip install mujoco") from err
    return mujoco


def look_pose(x: float, y: float, z: float, yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """OpenCV c2w of a camera at (x, y, z) heading ``yaw_deg`` in the floor plane (0 = +x,
    counter-clockwise seen from above), tilted up by ``pitch_deg``."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, (x, y, z)
    return c2w


class WorldRenderer:
    """Renders a :class:`~minwm_env.world.scenes.Scene` or a user's MJCF file.

    ``fov_y_deg`` is the vertical field of view; pixels are square and the principal point
    is centred, so the normalised intrinsics are ``[fy·H/W, fy, 0.5, 0.5]`` with
    ``fy = 0.5 / tan(fov_y / 2)`` (:attr:`intrinsics`).
    """

    def __init__(self, scene: Scene | str | Path, width: int = 64, height: int = 64, fov_y_deg: float = 60.0):
        mujoco = _import_mujoco()
        self._mujoco = mujoco
        if width < 1 or height < 1:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        if isinstance(scene, Scene):
            spec = mujoco.MjSpec.from_string(scene.xml)
            self.source = f"scene {scene.name}/{scene.seed}"
        else:
            path = Path(scene)
            if not path.is_file():
                raise FileNotFoundError(f"MJCF scene file {path} does not exist")
            try:
                spec = mujoco.MjSpec.from_file(str(path))
            except Exception as err:
                raise ValueError(f"{path} is not a valid MJCF scene ({err})") from err
            self.source = str(path)
        if CAMERA_NAME not in [c.name for c in spec.cameras]:
            spec.worldbody.add_camera(name=CAMERA_NAME, pos=[0, 0, 0.5])
        spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, width)
        spec.visual.global_.offheight = max(spec.visual.global_.offheight, height)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        mujoco.mj_forward(self.model, self.data)
        self.camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME)
        self.model.cam_fovy[self.camera_id] = fov_y_deg
        self.width, self.height, self.fov_y_deg = width, height, fov_y_deg
        try:
            self._renderer = mujoco.Renderer(self.model, height, width)
        except Exception as err:
            backend = os.environ.get("MUJOCO_GL")
            raise RuntimeError(
                f"MuJoCo could not open an offscreen OpenGL context (MUJOCO_GL={backend}): {err}. On a machine "
                "without a display install Mesa's EGL (Debian: apt-get install libegl1 libgl1-mesa-dri) and use "
                "MUJOCO_GL=egl, or install OSMesa (libosmesa6) and set MUJOCO_GL=osmesa") from err

    @property
    def intrinsics(self) -> np.ndarray:
        fy = 0.5 / math.tan(math.radians(self.fov_y_deg) / 2)
        return np.array([fy * self.height / self.width, fy, 0.5, 0.5])

    def render(self, c2w: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 frame seen by an OpenCV camera with pose ``c2w`` (4×4, world frame)."""
        self._pose_scene(c2w)
        return self._renderer.render().copy()

    def _pose_scene(self, c2w: np.ndarray) -> None:
        c2w = np.asarray(c2w, dtype=np.float64)
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise ValueError(f"c2w must be a finite 4x4 matrix, got shape {c2w.shape}")
        self.data.cam_xpos[self.camera_id] = c2w[:3, 3]
        self.data.cam_xmat[self.camera_id] = (c2w[:3, :3] @ OPENCV_TO_MUJOCO).reshape(-1)
        self._renderer.update_scene(self.data, camera=self.camera_id)

    def render_depth(self, c2w: np.ndarray) -> np.ndarray:
        """(H, W) float32 depth along the camera's z axis, in world units; ``inf`` where the
        ray hits nothing (the sky)."""
        self._pose_scene(c2w)
        self._renderer.enable_depth_rendering()
        try:
            depth = self._renderer.render().astype(np.float32)
        finally:
            self._renderer.disable_depth_rendering()
        geom = self._geom_ids(c2w)
        depth[geom < 0] = np.inf
        return depth

    def _geom_ids(self, c2w: np.ndarray) -> np.ndarray:
        """(H, W) int: the geom id each pixel shows, −1 for none."""
        self._pose_scene(c2w)
        self._renderer.enable_segmentation_rendering()
        try:
            ids = self._renderer.render()
        finally:
            self._renderer.disable_segmentation_rendering()
        geom = ids[..., 0].astype(np.int64)
        geom[ids[..., 1] != int(self._mujoco.mjtObj.mjOBJ_GEOM)] = -1
        return geom

    def geom_classes(self) -> np.ndarray:
        """(num_geoms,) the :data:`LABELS` index of every geom of the scene."""
        mujoco, model = self._mujoco, self.model
        types = {int(mujoco.mjtGeom.mjGEOM_BOX): "box", int(mujoco.mjtGeom.mjGEOM_SPHERE): "sphere",
                 int(mujoco.mjtGeom.mjGEOM_CYLINDER): "cylinder"}
        classes = []
        for g in range(model.ngeom):
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g) or ""
            if name.startswith("wall"):
                label = "wall"
            elif name.startswith("panel"):
                label = "panel"
            elif name == "floor" or int(model.geom_type[g]) == int(mujoco.mjtGeom.mjGEOM_PLANE):
                label = "floor"
            else:
                label = types.get(int(model.geom_type[g]), "other")
            classes.append(LABELS.index(label))
        return np.array(classes, dtype=np.int64)

    def render_labels(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) int64 :data:`LABELS` class of each pixel and (H, W) int64 geom id (−1: sky):
        the renderer's own segmentation, for evaluation (what is where, how large it looks)."""
        geom = self._geom_ids(c2w)
        classes = np.where(geom >= 0, self.geom_classes()[np.maximum(geom, 0)], LABELS.index("sky"))
        return classes, geom

    def render_many(self, c2w: np.ndarray) -> np.ndarray:
        """(N, 4, 4) poses → (N, H, W, 3) uint8 frames."""
        return np.stack([self.render(pose) for pose in c2w])

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class SceneRenderers:
    """Renderers of the built-in scenes by (kind, scene seed), each built on its first use, for
    code that draws frames from many layouts in turn. A scene and its renderer cost tens of
    milliseconds to build and hold a MuJoCo context, so at most ``capacity`` are kept; beyond
    that the cache starts afresh."""

    def __init__(self, size: int = 64, capacity: int = 16):
        if size < 1 or capacity < 1:
            raise ValueError(f"size and capacity must be >= 1, got {size} and {capacity}")
        self.size, self.capacity = size, capacity
        self._built: dict[tuple[str, int], tuple[Scene, WorldRenderer]] = {}

    def __call__(self, kind: str, seed: int) -> tuple[Scene, WorldRenderer]:
        from .scenes import make_scene

        key = (kind, int(seed))
        if key not in self._built:
            if len(self._built) >= self.capacity:
                self._built.clear()
            scene = make_scene(*key)
            self._built[key] = scene, WorldRenderer(scene, self.size, self.size)
        return self._built[key]
