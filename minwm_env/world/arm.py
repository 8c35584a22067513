"""A second ground-truth world where actions move things, not the camera: a robot arm on a table.

Gymnasium's own Pusher model (``envs/mujoco/assets/pusher_v5.xml``, read offline from the
installed package) is edited in code with MuJoCo's ``MjSpec``:

* every joint is **position controlled** (its motor becomes a position servo with its own
  stiffness and critical damping, stiff enough that a commanded target is reached well within
  one latent frame), so an action is a change of joint *targets*, not a torque;
* the puck (``object``) and the red goal disc stay; the table grows so the arm's base stands
  on it, and arm, table and puck get colours that stay apart at 64×64. The puck weighs 100 g
  (Pusher's 8 mg makes MuJoCo's contacts too soft to push it). As in Pusher, only the scoop
  touches the puck and the table: the links pass through both (in Pusher's pushing poses the
  elbow dips below the table top);
* a fixed camera ``minwm_arm`` looks at the table from the side and above, so the arm and the
  puck fill a good part of a 64×64 frame. It never moves: every frame's pose is the identity.

Actions are per latent frame changes of the targets of four visible joints, in degrees
(:func:`arm_action_spec`); the three roll joints hold their start angle. :class:`ArmWorld`
simulates and renders; :func:`arm_actions` makes seeded action sequences of the
:data:`ARM_ACTION_KINDS`.

    world = ArmWorld(64, 64)
    world.reset(np.random.default_rng(0))
    frames = world.apply([4.0, 0.0, 0.0, 0.0])   # 4 RGB frames: the arm pans 4° counter-clockwise
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..conditioning import ActionSpec
from .renderer import _import_mujoco

ARM_ACTION_SPEC_NAME = "pusher-arm"
CAMERA_NAME = "minwm_arm"
ARM_ACTION_KINDS = ("random", "smooth", "sweep", "reach", "push")
# The four joints the actions move (MJCF names r_<name>_joint), in action order.
ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex")
ROLL_JOINTS = ("upper_arm_roll", "forearm_roll", "wrist_roll")  # held at their start angle
MAX_DELTA_DEG = 8.0
# One RGB frame lasts 1/16 s (the datasets' and envs' 16 fps): 10 physics steps of 6.25 ms.
TIMESTEP = 0.00625
FRAME_SKIP = 10
# Servo stiffness per joint (N·m/rad), critically damped: the shoulder moves the whole arm,
# the wrist only the scoop. A step of the target settles to 1% within ~3 RGB frames; while a
# latent frame's ramp plays out the joints trail their targets by under 0.5°.
_KP = {"shoulder_pan": 2000.0, "shoulder_lift": 1500.0, "upper_arm_roll": 150.0, "elbow_flex": 500.0,
       "forearm_roll": 60.0, "wrist_flex": 100.0, "wrist_roll": 60.0}

# Kinematics of the Pusher arm (metres, MuJoCo world frame): the shoulder pan axis stands at
# BASE; the lift joint sits SHOULDER_OFFSET out along the arm, then the upper arm (UPPER) and the
# forearm (FOREARM) reach the wrist, where the scoop's cross bar is. The table top is at TABLE_Z.
BASE = np.array([0.0, -0.6, 0.0])
SHOULDER_OFFSET, UPPER, FOREARM = 0.1, 0.4, 0.321
TABLE_Z = -0.325
PUCK_RADIUS, PUCK_HALF_HEIGHT, PUCK_MASS, PUCK_DAMPING = 0.05, 0.05, 0.1, 3.0
# Joint ranges of the Pusher model (degrees, ARM_JOINTS order); checked against the model when
# an ArmWorld is built.
JOINT_LIMITS_DEG = np.degrees(np.array([[-2.2854, 1.714602], [-0.5236, 1.3963], [-2.3213, 0.0], [-1.094, 0.0]]))
_RANGE_SLACK_DEG = 0.5
# Where reset puts the puck: polar around the base (distance, azimuth from +x, degrees).
PUCK_DISTANCE = (0.58, 0.76)
PUCK_AZIMUTH_DEG = (10.0, 75.0)
# Fixed camera: eye and the point it looks at (world frame), vertical field of view.
CAMERA_EYE = (1.05, 0.45, 0.941)
CAMERA_TARGET = (0.3, -0.3, -0.12)
CAMERA_FOV_Y_DEG = 45.0

_COLOURS = {
    "table": (0.30, 0.35, 0.45, 1.0),   # slate blue
    "arm": (0.95, 0.55, 0.15, 1.0),     # orange links
    "joint": (0.85, 0.85, 0.80, 1.0),   # light joint caps and scoop
    "object": (0.95, 0.95, 0.95, 1.0),  # white puck
    "goal": (0.85, 0.10, 0.10, 1.0),    # red goal disc
}


def pusher_xml_path() -> str:
    """Path of Gymnasium's Pusher MJCF inside the installed ``gymnasium`` package."""
    try:
        import gymnasium
    except ImportError as err:  # pragma: no cover - a dependency of minwm
        raise ImportError("the arm world reads Gymnasium's Pusher model: pip install gymnasium") from err
    path = os.path.join(os.path.dirname(gymnasium.__file__), "envs/mujoco/assets/pusher_v5.xml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Gymnasium's Pusher model is not at {path} (gymnasium {gymnasium.__version__}); "
                                "the arm world needs gymnasium >= 1.0")
    return path


def arm_action_spec(max_delta_deg: float = MAX_DELTA_DEG, clip: bool = False) -> ActionSpec:
    """Per latent frame changes of the target angles of the four visible joints, in degrees.

    A positive ``d_shoulder_pan`` turns the arm counter-clockwise seen from above; positive
    ``d_shoulder_lift``, ``d_elbow_flex`` and ``d_wrist_flex`` tip the upper arm, the forearm and
    the scoop further down (the elbow and wrist angles run from about −133° and −63° up to 0,
    straight). The default ±8° moves the scoop by up to ~10 cm per latent frame, 2–5 pixels at
    64×64 (the wrist, which only tilts the small scoop, about one): every step visibly moves the
    arm, and a scripted push still takes several latent frames, so there is motion to predict.
    """
    if not max_delta_deg > 0:
        raise ValueError(f"max_delta_deg must be positive, got {max_delta_deg}")
    m = float(max_delta_deg)
    return ActionSpec(names=tuple(f"d_{name}" for name in ARM_JOINTS), low=(-m,) * 4, high=(m,) * 4, clip=clip,
                      units=("deg",) * 4,
                      description="change of the target angles of the Pusher arm's shoulder pan, shoulder lift, "
                                  "elbow flex and wrist flex joints per latent frame (position control)",
                      name=ARM_ACTION_SPEC_NAME)


def _look_at_quat(mujoco, eye, target) -> np.ndarray:
    """MuJoCo quaternion of a camera at ``eye`` looking at ``target`` with +z up in the image."""
    eye, target = np.asarray(eye, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    matrix = np.stack([right, up, -forward], axis=1)  # MuJoCo cameras look along −z, y up
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, matrix.reshape(-1))
    return quat


def build_arm_spec(width: int, height: int):
    """Gymnasium's Pusher as an ``MjSpec``, edited for the arm world (see the module docstring)."""
    mujoco = _import_mujoco()
    spec = mujoco.MjSpec.from_file(pusher_xml_path())
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST  # stiff servos stay stable
    # Motors → position servos on the same joints, their targets limited to the joint ranges.
    ranges = {joint.name: joint.range.copy() for joint in spec.joints}
    for actuator in spec.actuators:
        name = actuator.target.removeprefix("r_").removesuffix("_joint")
        actuator.name = name
        actuator.set_to_position(kp=_KP[name], dampratio=1.0)
        actuator.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.ctrlrange = ranges[actuator.target]
        actuator.forcelimited = mujoco.mjtLimited.mjLIMITED_FALSE
    for joint in spec.joints:
        if joint.name.startswith("obj_"):
            joint.damping[0] = PUCK_DAMPING  # table friction, as viscous drag: a pushed puck coasts a few cm
    # Colours that stay apart at 64×64, and a table big enough to stand the base on.
    for geom in spec.geoms:
        body = geom.parent.name
        if geom.name == "table":
            geom.size = [3.0, 3.0, 0.1]
            geom.pos = [0.2, -0.2, TABLE_Z]
            geom.rgba = _COLOURS["table"]
        elif body == "object":
            geom.rgba = _COLOURS["object"]
            # Pusher's puck weighs 8 mg: MuJoCo then makes its contacts so soft that the scoop
            # passes through it. 100 g (plus its joints' 40 g armature) is pushed like a puck.
            geom.mass = PUCK_MASS
        elif body == "goal":
            geom.rgba = _COLOURS["goal"]
        elif geom.name in ("e1", "e2", "e1p", "e2p"):
            continue  # the shoulder's "eyes" keep their colours
        elif geom.type == mujoco.mjtGeom.mjGEOM_CAPSULE and geom.size[0] >= 0.05:
            geom.rgba = _COLOURS["arm"]
        else:
            geom.rgba = _COLOURS["joint"]
    spec.worldbody.add_light(name="minwm_key", pos=[1.5, 1.0, 2.5], dir=[-0.5, -0.4, -1.0],
                             diffuse=[0.6, 0.6, 0.6], specular=[0.1, 0.1, 0.1], castshadow=False)
    spec.visual.quality.shadowsize = 512  # MuJoCo's 4096 costs 5x the render time for nothing at 64x64
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.35, 0.35, 0.35]
    spec.worldbody.add_camera(name=CAMERA_NAME, pos=list(CAMERA_EYE),
                              quat=list(_look_at_quat(mujoco, CAMERA_EYE, CAMERA_TARGET)), fovy=CAMERA_FOV_Y_DEG)
    spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, width)
    spec.visual.global_.offheight = max(spec.visual.global_.offheight, height)
    return spec


def scoop_ik(x: float, y: float, z: float, pitch_deg: float = 0.0) -> np.ndarray:
    """Joint angles (degrees, :data:`ARM_JOINTS` order) that put the scoop's cross bar at
    ``(x, y, z)`` with its prongs pitched ``pitch_deg`` below horizontal where the wrist allows.

    Analytic: the pan faces the point, then the shoulder lift and elbow solve the two-link arm
    in its vertical plane (the Pusher's elbow bends only one way, so there is one solution). Points
    out of reach are pulled to the nearest reachable distance; angles are clamped to the joints.
    """
    dx, dy = x - BASE[0], y - BASE[1]
    pan = math.atan2(dy, dx)
    reach = math.hypot(dx, dy) - SHOULDER_OFFSET
    drop = BASE[2] - z  # how far below the shoulder
    distance = min(max(math.hypot(reach, drop), abs(UPPER - FOREARM) + 1e-3), UPPER + FOREARM - 1e-3)
    below = math.atan2(drop, reach)
    at_shoulder = math.acos((UPPER ** 2 + distance ** 2 - FOREARM ** 2) / (2 * UPPER * distance))
    at_elbow = math.acos((UPPER ** 2 + FOREARM ** 2 - distance ** 2) / (2 * UPPER * FOREARM))
    lift = below + at_shoulder
    elbow = -(math.pi - at_elbow)
    wrist = math.radians(pitch_deg) - (lift + elbow)
    angles = np.degrees([pan, lift, elbow, wrist])
    return np.clip(angles, JOINT_LIMITS_DEG[:, 0], JOINT_LIMITS_DEG[:, 1])


def scoop_position(angles_deg) -> np.ndarray:
    """Forward kinematics of :func:`scoop_ik`: the cross bar's (x, y, z) for joint angles in degrees."""
    pan, lift, elbow = np.radians(np.asarray(angles_deg, dtype=np.float64)[:3])
    reach = SHOULDER_OFFSET + UPPER * math.cos(lift) + FOREARM * math.cos(lift + elbow)
    drop = UPPER * math.sin(lift) + FOREARM * math.sin(lift + elbow)
    return np.array([BASE[0] + reach * math.cos(pan), BASE[1] + reach * math.sin(pan), BASE[2] - drop])


def _as_floats(values) -> np.ndarray | None:
    """``values`` as a float64 array, or None where they are not numbers."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None


class ArmWorld:
    """The Pusher arm and its puck, simulated with position control and seen by a fixed camera.

    State changes only through :meth:`reset` and :meth:`apply` / :meth:`advance`, so a seed and
    an action sequence determine every frame. Joint angles are in degrees throughout, like the
    actions; positions are metres in MuJoCo's world frame (x, y on the table, z up).
    """

    def __init__(self, width: int = 64, height: int = 64, frame_skip: int = FRAME_SKIP):
        if width < 1 or height < 1:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1 physics steps per RGB frame, got {frame_skip}")
        mujoco = _import_mujoco()
        self._mujoco = mujoco
        self.width, self.height, self.frame_skip = width, height, frame_skip
        self.model = build_arm_spec(width, height).compile()
        self.data = mujoco.MjData(self.model)
        model = self.model

        def joint(name):
            return model.joint(f"r_{name}_joint")

        self._arm_qpos = np.array([joint(n).qposadr[0] for n in ARM_JOINTS])
        self._roll_qpos = np.array([joint(n).qposadr[0] for n in ROLL_JOINTS])
        self._arm_ctrl = np.array([model.actuator(n).id for n in ARM_JOINTS])
        self._roll_ctrl = np.array([model.actuator(n).id for n in ROLL_JOINTS])
        limits = np.degrees(np.array([joint(n).range for n in ARM_JOINTS]))
        if not np.allclose(limits, JOINT_LIMITS_DEG, atol=1e-3):
            raise ValueError(f"{pusher_xml_path()} has joint ranges {limits.tolist()} (degrees), expected "
                             f"{JOINT_LIMITS_DEG.tolist()}: this Gymnasium's Pusher model differs from the one "
                             "the arm world was built for")
        self.joint_limits_deg = limits
        self._object_qpos = np.array([model.joint("obj_slidex").qposadr[0], model.joint("obj_slidey").qposadr[0]])
        self._goal_qpos = np.array([model.joint("goal_slidex").qposadr[0], model.joint("goal_slidey").qposadr[0]])
        self._object_home = model.body("object").pos[:2].copy()
        self._goal_home = model.body("goal").pos[:2].copy()
        # Which geoms are the arm (any body below the shoulder) and which the puck, for masks.
        arm_root = model.body("r_shoulder_pan_link").id
        geom_body = model.geom_bodyid
        self._arm_geoms = np.append(model.body_rootid[geom_body] == arm_root, False)  # index −1: no geom
        self._object_geoms = np.append(geom_body == model.body("object").id, False)
        self.camera_id = model.camera(CAMERA_NAME).id
        self.fov_y_deg = float(model.cam_fovy[self.camera_id])
        try:
            self._renderer = mujoco.Renderer(model, height, width)
        except Exception as err:
            backend = os.environ.get("MUJOCO_GL")
            raise RuntimeError(
                f"MuJoCo could not open an offscreen OpenGL context (MUJOCO_GL={backend}): {err}. On a machine "
                "without a display install Mesa's EGL (Debian: apt-get install libegl1 libgl1-mesa-dri) and use "
                "MUJOCO_GL=egl, or install OSMesa (libosmesa6) and set MUJOCO_GL=osmesa") from err
        self._target = np.zeros(len(ARM_JOINTS))
        self._ready = False

    # -- properties --------------------------------------------------------------------------------
    @property
    def frame_dt(self) -> float:
        """Seconds of simulated time per RGB frame."""
        return self.frame_skip * float(self.model.opt.timestep)

    @property
    def intrinsics(self) -> np.ndarray:
        """Normalised ``[fx/W, fy/H, cx/W, cy/H]`` of the fixed camera (square pixels, centred)."""
        fy = 0.5 / math.tan(math.radians(self.fov_y_deg) / 2)
        return np.array([fy * self.height / self.width, fy, 0.5, 0.5])

    # -- state ---------------------------------------------------------------------------------------
    def random_joint_angles(self, rng: np.random.Generator) -> np.ndarray:
        """A start pose with the scoop raised above the table, somewhere over the work area."""
        distance = rng.uniform(0.5, 0.75)
        azimuth = math.radians(rng.uniform(0.0, 85.0))
        height = rng.uniform(-0.12, 0.08)
        point = BASE + [distance * math.cos(azimuth), distance * math.sin(azimuth), 0.0]
        return scoop_ik(point[0], point[1], height, pitch_deg=rng.uniform(-10.0, 40.0))

    def random_object_xy(self, rng: np.random.Generator) -> np.ndarray:
        """A puck position on the table that the scoop can reach and push sideways."""
        distance = rng.uniform(*PUCK_DISTANCE)
        azimuth = math.radians(rng.uniform(*PUCK_AZIMUTH_DEG))
        return BASE[:2] + distance * np.array([math.cos(azimuth), math.sin(azimuth)])

    def reset(self, rng: np.random.Generator, joint_angles=None, object_xy=None, goal_xy=None) -> None:
        """Start a new episode: arm at rest at ``joint_angles`` (degrees, :data:`ARM_JOINTS`
        order; random when None), puck at ``object_xy`` and goal at ``goal_xy`` (metres; random
        when None). Values are checked here; random ones come from ``rng`` in a fixed order."""
        angles = self.random_joint_angles(rng) if joint_angles is None else self._check_angles(joint_angles)
        obj = self.random_object_xy(rng) if object_xy is None else self._check_xy(object_xy, "object_xy")
        goal = self.random_object_xy(rng) if goal_xy is None else self._check_xy(goal_xy, "goal_xy")
        mujoco, data = self._mujoco, self.data
        mujoco.mj_resetData(self.model, data)
        data.qpos[self._arm_qpos] = np.radians(angles)
        data.qpos[self._roll_qpos] = 0.0
        data.qpos[self._object_qpos] = obj - self._object_home
        data.qpos[self._goal_qpos] = goal - self._goal_home
        self._target = angles.copy()
        data.ctrl[self._arm_ctrl] = np.radians(angles)
        data.ctrl[self._roll_ctrl] = 0.0
        mujoco.mj_forward(self.model, data)
        self._ready = True

    def _check_angles(self, joint_angles) -> np.ndarray:
        angles = _as_floats(joint_angles)
        if angles is None or angles.shape != (len(ARM_JOINTS),) or not np.isfinite(angles).all():
            raise ValueError(f"joint_angles must be {len(ARM_JOINTS)} finite angles in degrees {list(ARM_JOINTS)}, "
                             f"got {joint_angles!r}")
        low, high = self.joint_limits_deg[:, 0], self.joint_limits_deg[:, 1]
        # Simulated joints overshoot their ranges by a hair: angles read from the env come back.
        outside = (angles < low - _RANGE_SLACK_DEG) | (angles > high + _RANGE_SLACK_DEG)
        if outside.any():
            i = int(np.argmax(outside))
            raise ValueError(f"joint_angles: {ARM_JOINTS[i]} = {angles[i]:g}° is outside its range "
                             f"[{low[i]:.1f}°, {high[i]:.1f}°]")
        return np.clip(angles, low, high)

    @staticmethod
    def _check_xy(xy, what: str) -> np.ndarray:
        values = _as_floats(xy)
        if values is None or values.shape != (2,) or not np.isfinite(values).all():
            raise ValueError(f"{what} must be a finite (x, y) position in metres, got {xy!r}")
        xy = values
        if np.abs(xy - [0.2, -0.2]).max() > 1.4:
            raise ValueError(f"{what} = {xy.tolist()} is off the table (x in [-1.2, 1.6], y in [-1.6, 1.2])")
        return xy

    def _check_ready(self) -> None:
        if not self._ready:
            raise RuntimeError("call reset() before stepping or rendering the arm world")

    # -- stepping ------------------------------------------------------------------------------------
    def advance(self) -> None:
        """One RGB frame of simulated time (``frame_skip`` physics steps) with the targets held."""
        self._check_ready()
        self._mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)

    def apply(self, action_row, substeps: int = 4, render: bool = True) -> np.ndarray | None:
        """Spread one latent frame's action (target deltas in degrees) over ``substeps`` RGB
        frames: the targets move by ``action_row / substeps`` per frame (clamped to the joint
        ranges) and the arm follows. Returns the (substeps, H, W, 3) frames (None without
        ``render``). The action is checked for shape and finiteness; bounds are the caller's."""
        self._check_ready()
        row = np.asarray(action_row, dtype=np.float64)
        if row.shape != (len(ARM_JOINTS),) or not np.isfinite(row).all():
            raise ValueError(f"an arm action row is {len(ARM_JOINTS)} finite target deltas in degrees "
                             f"{[f'd_{n}' for n in ARM_JOINTS]}, got {np.asarray(action_row).tolist()}")
        if substeps < 1:
            raise ValueError(f"substeps must be >= 1 RGB frames, got {substeps}")
        frames = []
        for _ in range(substeps):
            self._target = np.clip(self._target + row / substeps, self.joint_limits_deg[:, 0],
                                   self.joint_limits_deg[:, 1])
            self.data.ctrl[self._arm_ctrl] = np.radians(self._target)
            self.advance()
            if render:
                frames.append(self.render())
        return np.stack(frames) if render else None

    # -- observations ----------------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """The fixed camera's view now: (H, W, 3) uint8."""
        self._check_ready()
        self._renderer.update_scene(self.data, camera=self.camera_id)
        return self._renderer.render().copy()

    def masks(self) -> dict[str, np.ndarray]:
        """Boolean (H, W) masks of what the camera sees now: ``arm`` (any arm link or the scoop)
        and ``object`` (the puck), from MuJoCo's segmentation rendering (geom → body)."""
        self._check_ready()
        renderer = self._renderer
        renderer.update_scene(self.data, camera=self.camera_id)
        renderer.enable_segmentation_rendering()
        try:
            ids = renderer.render()
        finally:
            renderer.disable_segmentation_rendering()
        geom = ids[..., 0].astype(np.int64)
        geom[(ids[..., 1] != int(self._mujoco.mjtObj.mjOBJ_GEOM)) | (geom >= self.model.ngeom)] = -1
        return {"arm": self._arm_geoms[geom], "object": self._object_geoms[geom]}

    def joint_angles(self) -> np.ndarray:
        """The four controlled joints' angles now, degrees (:data:`ARM_JOINTS` order)."""
        return np.degrees(self.data.qpos[self._arm_qpos])

    def targets(self) -> np.ndarray:
        """The four controlled joints' target angles now, degrees."""
        return self._target.copy()

    def object_position(self) -> np.ndarray:
        """The puck's (x, y) on the table, metres."""
        return self.data.xpos[self.model.body("object").id][:2].copy()

    def goal_position(self) -> np.ndarray:
        """The goal disc's (x, y) on the table, metres."""
        return self.data.xpos[self.model.body("goal").id][:2].copy()

    def scoop_position(self) -> np.ndarray:
        """The scoop cross bar's (x, y, z) now, metres."""
        return self.data.xpos[self.model.body("r_wrist_roll_link").id].copy()

    def close(self) -> None:
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------
# Action sequences

# Heights of the scoop's cross bar (metres): travelling above the puck, pushing it (the bar's
# capsule then clears the table by ~2.5 cm and the prongs are level with the puck's side), and
# hovering just over its top when reaching for it.
HOVER_Z, PUSH_Z, OVER_PUCK_Z = -0.12, -0.28, -0.19
# Sideways clearance (metres) between the pushing prong's axis and the puck's centre when a
# push starts: prong radius 0.02 + puck radius 0.05 + 8 cm of run-up.
_RUN_UP = 0.02 + PUCK_RADIUS + 0.08


def arm_actions(kind: str, num_latent_frames: int, seed: int, world: ArmWorld | None = None,
                max_delta_deg: float = MAX_DELTA_DEG) -> np.ndarray:
    """``num_latent_frames - 1`` action rows (degrees, :func:`arm_action_spec` order) of one kind.

    Row k moves the targets from latent frame k to k + 1 (the dataset convention). Kinds:

    * ``random`` — every row independent, uniform within the bounds: jittery motion.
    * ``smooth`` — a random walk of the joint velocities (AR(1), correlation 0.8): the arm
      drifts in smooth, sustained arcs.
    * ``sweep`` — one joint at a time, in a random order and direction: out at full speed for
      2–3 latent frames, then back by the same amount (where the joint's range allowed it).
    * ``reach`` — scripted from the world's state: the scoop travels to just above the puck and
      stays there. Needs ``world`` (after :meth:`ArmWorld.reset`).
    * ``push`` — scripted from the world's state: the scoop goes beside the puck, lowers to the
      table and swings the shoulder pan through the puck's position, so a prong knocks the puck
      sideways (towards the middle of the work area), then rises. Needs ``world``. A whole push
      takes ~10–18 latent frames from a random start: shorter clips end before the contact.

    Scripted kinds only read the world (its targets and puck position); the rows are a plan
    made before any of them is applied. Rows after a script ends are zero (the arm holds still).
    """
    if kind not in ARM_ACTION_KINDS:
        raise ValueError(f"arm action kind must be one of {ARM_ACTION_KINDS}, got {kind!r}")
    if num_latent_frames < 1:
        raise ValueError(f"num_latent_frames must be >= 1, got {num_latent_frames}")
    if not max_delta_deg > 0:
        raise ValueError(f"max_delta_deg must be positive, got {max_delta_deg}")
    rng = np.random.default_rng(seed)
    count, bound = num_latent_frames - 1, float(max_delta_deg)
    rows = np.zeros((count, len(ARM_JOINTS)))
    if kind == "random":
        rows = rng.uniform(-bound, bound, size=rows.shape)
    elif kind == "smooth":
        velocity = rng.uniform(-bound, bound, size=len(ARM_JOINTS)) * 0.5
        for k in range(count):
            velocity = 0.8 * velocity + 0.6 * rng.normal(0.0, 0.5 * bound, size=len(ARM_JOINTS))
            rows[k] = np.clip(velocity, -bound, bound)
    elif kind == "sweep":
        rows = _sweep(rng, count, bound, None if world is None else world.targets())
    else:
        if world is None or not world._ready:
            raise ValueError(f"arm action kind {kind!r} is scripted from the scene: pass the world, after reset()")
        plan = _Plan(world.targets(), bound, count)
        if kind == "reach":
            _reach(plan, world.object_position(), rng)
        else:
            _push(plan, world.object_position(), rng)
        rows[:len(plan.rows)] = plan.rows
    return rows


def _sweep(rng: np.random.Generator, count: int, bound: float, start: np.ndarray | None) -> np.ndarray:
    """Rows of the ``sweep`` kind; with ``start`` (the targets), directions keep to the joint ranges."""
    rows, target = [], None if start is None else start.copy()
    while len(rows) < count:
        for joint in rng.permutation(len(ARM_JOINTS)):
            frames, sign = int(rng.integers(2, 4)), float(rng.choice([-1.0, 1.0]))
            if target is not None:  # head for the side with room, so the way back retraces the way out
                low, high = JOINT_LIMITS_DEG[joint]
                room_up, room_down = high - target[joint], target[joint] - low
                sign = 1.0 if room_up >= room_down else -1.0
            for step_sign in [sign] * frames + [-sign] * frames:
                row = np.zeros(len(ARM_JOINTS))
                row[joint] = step_sign * bound
                if target is not None:
                    moved = np.clip(target + row, JOINT_LIMITS_DEG[:, 0], JOINT_LIMITS_DEG[:, 1])
                    row, target = moved - target, moved
                rows.append(row)
    return np.array(rows[:count]).reshape(count, len(ARM_JOINTS))


class _Plan:
    """Action rows that drive the targets through joint-space waypoints at up to ``bound`` per row."""

    def __init__(self, start: np.ndarray, bound: float, budget: int):
        self.target, self.bound, self.budget = np.asarray(start, dtype=np.float64).copy(), bound, budget
        self.rows: list[np.ndarray] = []

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.budget

    def go(self, angles: np.ndarray) -> None:
        """Move every joint towards ``angles`` at full speed (each joint stops when it arrives)."""
        angles = np.clip(angles, JOINT_LIMITS_DEG[:, 0], JOINT_LIMITS_DEG[:, 1])
        while not self.full and np.abs(angles - self.target).max() > 1e-9:
            row = np.clip(angles - self.target, -self.bound, self.bound)
            self.rows.append(row)
            self.target = self.target + row

    def line(self, points: list[np.ndarray], pitch_deg: float) -> None:
        """Move the cross bar along straight segments through ``points`` (x, y, z): each row goes
        as far along the segment as the bound allows (the arm passes through points 1 cm apart)."""
        here = scoop_position(self.target)
        for point in points:
            pieces = max(1, int(math.ceil(float(np.linalg.norm(point - here)) / 0.01)))
            path = [scoop_ik(*(here + (point - here) * i / pieces), pitch_deg=pitch_deg) for i in range(1, pieces + 1)]
            at = 0
            while not self.full and at < pieces:
                reach = at
                while reach < pieces and np.abs(path[reach] - self.target).max() <= self.bound:
                    reach += 1
                if reach == at:  # one piece needs more than a row: go there in several
                    self.go(path[at])
                    at += 1
                else:
                    self.go(path[reach - 1])
                    at = reach
            here = point


def _polar(distance: float, azimuth: float, z: float) -> np.ndarray:
    return BASE + np.array([distance * math.cos(azimuth), distance * math.sin(azimuth), z - BASE[2]])


def _reach(plan: _Plan, puck: np.ndarray, rng: np.random.Generator) -> None:
    offset = puck - BASE[:2]
    distance, azimuth = float(np.hypot(*offset)), float(math.atan2(offset[1], offset[0]))
    pitch = rng.uniform(0.0, 30.0)
    above = _polar(distance - 0.01, azimuth, HOVER_Z)
    plan.go(scoop_ik(*above, pitch_deg=pitch))
    plan.line([_polar(distance - 0.01, azimuth, OVER_PUCK_Z)], pitch)


def _push(plan: _Plan, puck: np.ndarray, rng: np.random.Generator) -> None:
    offset = puck - BASE[:2]
    distance, azimuth = float(np.hypot(*offset)), float(math.atan2(offset[1], offset[0]))
    # The puck sits between the prongs' roots and tips; a prong hits it as the pan swings.
    bar = distance - 0.05
    current = scoop_position(plan.target)
    side = math.atan2(current[1] - BASE[1], current[0] - BASE[0]) - azimuth  # where the scoop is now
    if abs(side) < math.radians(50.0):
        sign = -1.0 if side > 0 else 1.0  # swing through from the side the scoop is on
    else:  # far away: push towards the middle of the work area
        middle = math.radians(sum(PUCK_AZIMUTH_DEG) / 2 + rng.uniform(-20.0, 20.0))
        sign = 1.0 if middle > azimuth else -1.0
    run_up = (_RUN_UP + 0.1) / distance  # the leading prong is 0.1 m to the side of the bar
    start = azimuth - sign * run_up
    end = azimuth + sign * math.radians(rng.uniform(5.0, 20.0))
    pitch = 0.0
    if sign * side > 0:  # the scoop is beyond the puck: pass over it, not through it
        plan.go(scoop_ik(*_polar(bar, start, HOVER_Z), pitch_deg=pitch))
    plan.go(scoop_ik(*_polar(bar, start, PUSH_Z + 0.06), pitch_deg=pitch))
    plan.line([_polar(bar, start, PUSH_Z)], pitch)
    plan.go(scoop_ik(*_polar(bar, end, PUSH_Z), pitch_deg=pitch))  # only the pan moves
    plan.line([_polar(bar, end, HOVER_Z)], pitch)


def ready_joint_angles(rng: np.random.Generator, object_xy) -> np.ndarray:
    """A start pose with the scoop raised near the puck at ``object_xy``, where a ``push`` can
    reach it in a few latent frames (datasets start ``push`` clips here, so short clips push too)."""
    offset = np.asarray(object_xy, dtype=np.float64) - BASE[:2]
    distance = float(np.hypot(*offset)) + rng.uniform(-0.08, 0.05)
    azimuth = math.atan2(offset[1], offset[0]) + math.radians(rng.choice([-1.0, 1.0]) * rng.uniform(18.0, 30.0))
    point = _polar(distance, azimuth, rng.uniform(PUSH_Z + 0.06, HOVER_Z + 0.02))
    return scoop_ik(*point, pitch_deg=rng.uniform(-10.0, 30.0))
