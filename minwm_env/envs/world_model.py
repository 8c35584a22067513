"""The world model as a Gymnasium environment: ``minwm/World-v0`` and its native vector env.

    import gymnasium as gym, minwm_env
    env = gym.make("minwm/World-v0")                  # the shipped default world model
    env = gym.make("minwm/World-v0", model="tiny")    # or any preset / model folder
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step([0, 0, 0.08, 0, 0, 0])   # forward

    envs = gym.make_vec("minwm/World-v0", num_envs=8, vectorization_mode="vector_entry_point", model="tiny")
"""

from __future__ import annotations

import gc
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ..backbones import CausalWan
from ..codec import from_uint8, to_uint8
from ..conditioning import check_same_space, load_action_spec
from ..generator import StreamingGenerator
from ..models import DEFAULT_MODEL, WorldModel, load_model
from ..text import PromptEncoder
from ..threads import chosen_threads, torch_threads
from ..world.paths import random_start
from ..world.renderer import WorldRenderer
from ..world.scenes import make_scene
from .common import Seconds, action_space, check_options, chunk_actions, observation_space, stack_infos
from .ground_truth import _PyRandom

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESET_OPTIONS = ("image", "prompt", "negative_prompt")


def resolve_model(model: str | WorldModel, device, dtype) -> WorldModel:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if isinstance(model, WorldModel):
        return model.to(device, dtype)
    return load_model(model, device=device, dtype=dtype)


ARM_START = "arm"  # start_scene for robot-arm models: the arm world (minwm_env/world/arm.py)


class StartFrames:
    """Start images rendered from the ground-truth world when ``reset`` is given none: a scene
    of the camera world at a random free pose, or (``"arm"``) the arm world from a random state
    (its camera is fixed: the pose is the camera's)."""

    def __init__(self, scene: str, height: int, width: int):
        self.scene_name, self.height, self.width = scene, height, width
        self._scene = self._renderer = None

    def sample(self, np_random: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.scene_name == ARM_START:
            if self._renderer is None:
                from ..world.arm import ArmWorld
                self._renderer = ArmWorld(self.width, self.height)
            self._renderer.reset(np_random)
            return self._renderer.render(), np.eye(4)
        if self._renderer is None:
            self._scene = make_scene(self.scene_name, 0)
            self._renderer = WorldRenderer(self._scene, self.width, self.height)
        pose = random_start(self._scene, _PyRandom(np_random))
        return self._renderer.render(pose), pose

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()


def default_start_scene(start_scene: str | None, spec) -> str:
    """The world start images come from: as asked, else the arm world for an arm model and the
    room for every other."""
    if start_scene is not None:
        return start_scene
    from ..world.arm import ARM_ACTION_SPEC_NAME
    return ARM_START if spec.name == ARM_ACTION_SPEC_NAME else "room"


def check_image(image, height: int, width: int, what: str = "image") -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a uint8 array (H, W, 3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{what} must have dtype uint8 (values 0..255), got {image.dtype}")
    if image.shape != (height, width, 3):
        raise ValueError(f"{what} must have shape ({height}, {width}, 3) for this model, got {image.shape}")
    return image


def check_prompt(prompt, text_dim: int, encode: Callable[[str], torch.Tensor] | None = None) -> torch.Tensor | None:
    """Prompt embeddings (1, L, text_dim): given as embeddings (L, text_dim), or a string that
    ``encode`` turns into them (:class:`~minwm_env.text.PromptEncoder`)."""
    if prompt is None:
        return None
    if isinstance(prompt, str):
        if encode is None:
            raise ValueError(f"prompt must be float embeddings (L, {text_dim}) here, got a string")
        prompt = encode(prompt)
    elif isinstance(prompt, (list, tuple)) and any(isinstance(p, str) for p in prompt):
        raise TypeError(f"prompt must be one string (the same for every env) or float embeddings (L, {text_dim}), "
                        f"got a {type(prompt).__name__} of strings")
    prompt = torch.as_tensor(prompt)
    if prompt.ndim == 2:
        prompt = prompt.unsqueeze(0)
    if prompt.ndim != 3 or prompt.shape[0] != 1 or prompt.shape[-1] != text_dim or not prompt.is_floating_point():
        raise ValueError(f"prompt must be float embeddings (L, {text_dim}), got shape {tuple(prompt.shape)}")
    if not torch.isfinite(prompt).all():
        raise ValueError("prompt embeddings contain NaN or inf")
    return prompt


DEFAULT_MEMORY_FRAMES = 32


def memory_frames(memory: bool | int | None, settings) -> int:
    """The env's ``memory`` argument as a capacity: None, the model's own setting
    (``memory_frames``); False or 0, none; True, the model's setting or 32; N, N frames."""
    if memory is None:
        return settings.memory_frames
    if isinstance(memory, bool):
        return (settings.memory_frames or DEFAULT_MEMORY_FRAMES) if memory else 0
    if not isinstance(memory, int) or memory < 0:
        raise ValueError(f"memory must be None, a bool or a number of frames >= 0, got {memory!r}")
    return memory


class _World:
    """What the single and the vector env share: a batched generator and per-row bookkeeping."""

    def __init__(self, model, num_envs, device, dtype, obs_mode, sampler, start_scene, window_frames, sink_frames,
                 num_threads, memory=None, action_spec=None, compile=None, fold_writes=True):
        self.num_threads = chosen_threads(num_threads)  # None: torch's as they are (minwm_env.threads)
        with torch_threads(self.num_threads):
            self.model = resolve_model(model, device, dtype)
        settings = self.model.settings
        self.height, self.width = settings.height, settings.width
        self.generator = StreamingGenerator(self.model, sampler, batch_size=num_envs, window_frames=window_frames,
                                            compile=compile, fold_writes=fold_writes,
                                            sink_frames=sink_frames, memory_frames=memory_frames(memory, settings))
        self.spec = self.generator.action_spec
        if action_spec is not None:  # the space the caller expects: the model's, or a clear error
            check_same_space(self.spec, load_action_spec(action_spec), f"the model {model if isinstance(model, str) else 'given'}",
                             f"action_spec={action_spec!r}")
        self.chunk_frames = self.generator.chunk_frames
        self.frames_per_chunk = self.chunk_frames * self.model.codec.temporal_factor
        self.obs_mode = obs_mode
        self.action_space = action_space(self.spec)
        self.observation_space = observation_space(obs_mode, self.height, self.width, self.frames_per_chunk,
                                                   tuple(self.generator.latent_shape))
        self.starts = StartFrames(default_start_scene(start_scene, self.spec), self.height, self.width)
        self.text_dim = self.model.backbone.text_dim
        # string prompts: the text encoder of the folder the model came from, loaded on first use
        self.prompts = PromptEncoder(model, self.text_dim, self.model.device, self.model.dtype,
                                     wan=isinstance(self.model.backbone, CausalWan))
        self.last_frames: np.ndarray | None = None  # (N, H, W, 3)
        self.frame_index = np.zeros(num_envs, dtype=np.int64)

    def prompt_options(self, options: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The episode's prompt and negative prompt embeddings from the reset options. A sampler
        with guidance and a string prompt get the encoded empty prompt as the negative one when
        none is given, as diffusers' WanPipeline does."""
        prompt = check_prompt(options.get("prompt"), self.text_dim, self.prompts)
        negative = options.get("negative_prompt")
        if negative is None and isinstance(options.get("prompt"), str) and self.generator.num_branches == 2:
            negative = ""
        return prompt, check_prompt(negative, self.text_dim, self.prompts)

    def start_images(self, images, np_randoms) -> tuple[np.ndarray, list]:
        """Checked start images (N, H, W, 3) uint8, rendered where none is given."""
        out, poses = [], []
        for i, rng in enumerate(np_randoms):
            if images is not None and images[i] is not None:
                out.append(check_image(images[i], self.height, self.width))
                poses.append(None)
            else:
                image, pose = self.starts.sample(rng)
                out.append(image)
                poses.append(pose)
        return np.stack(out), poses

    def to_model_images(self, images: np.ndarray) -> torch.Tensor:
        return from_uint8(torch.from_numpy(images))

    def reset_observation(self, images: np.ndarray, latents: torch.Tensor | None) -> np.ndarray:
        """Observations right after a reset: the start image (repeated to fill a chunk)."""
        if self.obs_mode == "frame":
            return images.copy()
        if self.obs_mode == "chunk":
            return np.repeat(images[:, None], self.frames_per_chunk, axis=1)
        return latents.float().cpu().numpy().repeat(self.chunk_frames, axis=2)

    def step_observation(self, out, frames: np.ndarray | None) -> np.ndarray:
        if self.obs_mode == "frame":
            return frames[:, -1].copy()
        if self.obs_mode == "chunk":
            return frames
        return out.latents.float().cpu().numpy()

    # The info contract, one owner: the single env returns row 0's dict, the vector env gives
    # row i's to ``reward_fn`` and batches them (``stack_infos``), so both carry the same keys.
    def reset_info(self, row: int, image: np.ndarray, start_world_pose: np.ndarray | None) -> dict:
        """Row ``row``'s info right after its reset (``image``: its start image (H, W, 3))."""
        return {"pose": np.eye(4), "latent_poses": np.eye(4)[None], "frame_index": 0, "frames": image[None],
                "latency_s": Seconds(0.0), "timings": {}, "start_world_pose": start_world_pose}

    def step_info(self, row: int, out, frames: np.ndarray | None) -> dict:
        """Row ``row``'s info after a step (``frames``: the batch's decoded frames (N, T, H, W, 3))."""
        return {"pose": self.generator.c2w[row].numpy().copy(),
                "latent_poses": None if out.c2w is None else out.c2w[row].numpy().copy(),  # not a view of the stream
                "frame_index": int(self.frame_index[row]), "frames": None if frames is None else frames[row],
                "latency_s": Seconds(out.timings["time/chunk_s"]),
                "timings": {k: Seconds(v) for k, v in out.timings.items()}}

    def close(self) -> None:
        self.starts.close()
        self.generator = None
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class WorldModelEnv(gym.Env):
    """A world model that streams the next frames for each camera action.

    ## Description
    One ``step`` generates one chunk (4 latent frames = 16 RGB frames with the defaults) with
    the few-step autoregressive sampler against the KV cache of everything seen so far, and
    decodes it with the streaming VAE. The world continues from a start image, given or
    rendered from the ground-truth world.

    ## Action Space
    The model's action space: by default ``Box(6,)`` camera deltas ``[dx, dy, dz, yaw, pitch,
    roll]`` per latent frame (scene units, degrees; OpenCV camera axes), held for the chunk,
    or ``(chunk_frames, 6)`` for one per latent frame; or the ``ActionSpec`` the model was
    trained with. Values beyond the bounds raise (they are the range the model was trained on).

    ## Observation Space
    ``obs_mode="frame"`` (default): the chunk's last frame, ``uint8 (H, W, 3)``; ``"chunk"``:
    all its RGB frames ``uint8 (T, H, W, 3)``; ``"latent"``: the chunk's latents
    ``float32 (C, chunk_frames, h, w)`` (no decoding: fastest).

    ## Rewards
    0, unless ``reward_fn(observation, info) -> float`` is given.

    ## Starting State
    ``reset(seed=..., options={"image": uint8 (H, W, 3), "prompt": embeddings (L, text_dim)})``.
    The prompt may be a string instead (``"a sunny street"``) for a model loaded from a Wan
    folder with ``text_encoder/`` and ``tokenizer/`` (e.g. Wan2.1-T2V-1.3B-Diffusers), with
    ``pip install "minwm[text]"``: the folder's UMT5 is loaded on the first string, on the
    model's device and dtype, and each distinct prompt is encoded once, exactly as diffusers'
    WanPipeline does (:mod:`minwm_env.text`); the vector env takes one prompt for all envs.
    ``"negative_prompt"`` (a string or embeddings) is what a sampler with guidance steers away
    from; with a string prompt it defaults to the encoded empty prompt, as in WanPipeline.
    A string for a model without a text encoder (a preset, the shipped default) raises.
    Without an image, a start view is rendered from the ground-truth world (``start_scene``:
    a scene name, or "arm"; default: the arm world for a model of the pusher arm, else "room")
    at a random pose (or arm state) drawn from the env's RNG.

    ## Episode End
    Never terminates; truncated after ``max_episode_steps`` (registration: 200).

    ## Info
    ``pose`` (4×4 c2w of the last frame relative to the start, from the actions), ``latent_poses``
    (the chunk's per-latent-frame poses), ``frame_index`` (RGB index of the last frame),
    ``frames`` (the chunk's RGB frames, None in latent mode), ``latency_s`` (wall time of the
    step), ``timings`` (denoise / cache / decode split); at reset also ``start_world_pose``
    (the ground-truth pose of a rendered start, else None).

    ## Arguments
    ``model`` (default ``"minwm-default"``, the trained model shipped in the package; a preset
    name such as ``"tiny"`` (random weights), a folder written by minwm_train / a diffusers Wan
    folder, or a loaded ``WorldModel``), ``device``, ``dtype``, ``obs_mode``,
    ``reward_fn``, ``sampler`` (default: the model's few-step sampler), ``start_scene``,
    ``window_frames``, ``sink_frames``, ``render_mode`` ("rgb_array"), ``num_threads`` (torch
    threads for resets and steps, restored after each; default: the package's choice, see
    :mod:`minwm_env.threads`), ``memory`` (past frames kept by place to fill what the last
    frame never saw, so a place looked at again comes back: None, the model's own setting;
    True or False; or a number of frames; reset clears it, vector rows keep their own),
    ``compile`` (None; a ``torch.compile`` mode such as "reduce-overhead" for CUDA graphs on a
    GPU, or a backend name: the backbone's streaming forward on a static-shape cache, compiled
    once per shape — two graphs in the first chunk, three from then on),
    ``fold_writes`` (True: the clean write rides on the next chunk's first forward, one forward
    fewer per chunk; False: a separate write pass and a cache smaller by one chunk — with
    ``window_frames=8`` what fits Wan2.1-1.3B at 480×832 in 16 GiB, BENCHMARKS.md),
    ``action_spec`` (the action space you expect — a name, a spec file or an ``ActionSpec``;
    the model's own space is always used, and one that differs raises, naming both).

    ## Vectorized environment
    ``gym.make_vec("minwm/World-v0", num_envs=N, vectorization_mode="vector_entry_point")``
    runs N worlds in one batched forward pass (:class:`WorldModelVectorEnv`).

    ## Version History
    * v0: initial version.

    ## Example
    >>> import gymnasium as gym, minwm_env
    >>> env = gym.make("minwm/World-v0", model="tiny")
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    (64, 64, 3)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 16}

    def __init__(self, model: str | WorldModel = DEFAULT_MODEL, device: str = "cpu",
                 dtype: str | torch.dtype = "float32",
                 obs_mode: str = "frame", reward_fn: Callable | None = None, render_mode: str | None = "rgb_array",
                 sampler=None, start_scene: str | None = None, window_frames: int | None = None,
                 sink_frames: int | None = None, num_threads: int | None = None, memory: bool | int | None = None,
                 action_spec=None, compile=None, fold_writes: bool = True):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        self._world = _World(model, 1, device, dtype, obs_mode, sampler, start_scene, window_frames, sink_frames,
                             num_threads, memory, action_spec, compile, fold_writes)
        self.action_space = self._world.action_space
        self.observation_space = self._world.observation_space
        self.reward_fn, self.render_mode, self.obs_mode = reward_fn, render_mode, obs_mode
        self._ready = False

    @property
    def world_model(self) -> WorldModel:
        return self._world.model

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        with torch_threads(self._world.num_threads):
            return self._reset(options)

    def _reset(self, options: dict | None):
        options = check_options(options, RESET_OPTIONS)
        world = self._world
        prompt, negative = world.prompt_options(options)
        images, poses = world.start_images([options.get("image")], [self.np_random])
        noise_seed = int(self.np_random.integers(2**62))
        first = world.generator.reset(seed=noise_seed, image=world.to_model_images(images), prompt_embeds=prompt,
                                      negative_prompt_embeds=negative, decode=False)
        del first
        world.last_frames = images
        world.frame_index[:] = 0
        self._ready = True
        latents = None
        if self.obs_mode == "latent":
            latents = world.model.codec.encode_image(world.to_model_images(images))
        obs = world.reset_observation(images, latents)[0]
        return obs, world.reset_info(0, images[0], poses[0])

    def step(self, action):
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        with torch_threads(self._world.num_threads):
            return self._step(action)

    def _step(self, action):
        world = self._world
        actions = chunk_actions(action, world.spec, world.chunk_frames)
        out = world.generator.next_chunk(actions[None], decode=self.obs_mode != "latent")
        frames = None if out.frames is None else to_uint8(out.frames).cpu().numpy()
        if frames is not None:
            world.last_frames = frames[:, -1]
        world.frame_index += world.frames_per_chunk
        obs = world.step_observation(out, frames)[0]
        info = world.step_info(0, out, frames)
        reward = 0.0 if self.reward_fn is None else float(self.reward_fn(obs, info))
        return obs, reward, False, False, info

    def render(self):
        if self.render_mode != "rgb_array" or self._world.last_frames is None:
            return None
        return self._world.last_frames[0].copy()

    def close(self):
        if getattr(self, "_world", None) is not None:
            self._world.close()
            self._world = None


class WorldModelVectorEnv(VectorEnv):
    """``num_envs`` worlds stepped in one batched forward pass (see :class:`WorldModelEnv`).

    Independent resets: ``reset(seed=[...], options={"reset_mask": mask, "image": images})``
    restarts only the masked envs. Autoreset follows Gymnasium's next-step mode: after an
    env is truncated, its next ``step`` ignores its action and returns its reset observation.
    Row i evolves exactly as a single ``WorldModelEnv`` given the same seeds and actions (up to
    float rounding).

    ``info`` has the single env's keys in Gymnasium's vector layout (what ``SyncVectorEnv``
    builds): ``info[key][i]`` is row i's value (arrays stacked, ``timings`` a dict of arrays)
    and the bool mask ``info["_" + key]`` marks the rows that have it: at an autoreset, the
    restarted rows carry their reset info (``start_world_pose`` among it); at a masked reset,
    only the reset rows. ``reward_fn(observation, info)`` gets row i's observation and info,
    exactly what a single env passes.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 16, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, model: str | WorldModel = DEFAULT_MODEL, device: str = "cpu",
                 dtype: str | torch.dtype = "float32", obs_mode: str = "frame", reward_fn: Callable | None = None,
                 render_mode: str | None = "rgb_array", sampler=None, start_scene: str | None = None,
                 window_frames: int | None = None, sink_frames: int | None = None, max_episode_steps: int | None = None,
                 num_threads: int | None = None, memory: bool | int | None = None,
                 action_spec=None, compile=None, fold_writes: bool = True):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self._world = _World(model, num_envs, device, dtype, obs_mode, sampler, start_scene, window_frames, sink_frames,
                             num_threads, memory, action_spec, compile, fold_writes)
        self.num_envs = num_envs
        self.single_action_space = self._world.action_space
        self.single_observation_space = self._world.observation_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.reward_fn, self.render_mode, self.obs_mode = reward_fn, render_mode, obs_mode
        self.max_episode_steps = max_episode_steps
        self._np_randoms = [np.random.default_rng() for _ in range(num_envs)]
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._ready = False

    def _seed_rows(self, rows, seed) -> None:
        if seed is None:
            return
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed must be an int or a list of {self.num_envs} seeds, got {len(seeds)}")
        for r in rows:
            if seeds[r] is not None:
                self._np_randoms[r] = np.random.default_rng(seeds[r])

    def reset(self, *, seed: int | list | None = None, options: dict | None = None):
        with torch_threads(self._world.num_threads):
            return self._reset(seed, options)

    def _reset(self, seed, options: dict | None):
        options = check_options(options, RESET_OPTIONS + ("reset_mask",))
        world = self._world
        mask = options.get("reset_mask")
        rows = list(range(self.num_envs)) if mask is None else [int(i) for i in np.flatnonzero(np.asarray(mask))]
        if mask is not None and (np.asarray(mask).shape != (self.num_envs,) or np.asarray(mask).dtype != bool):
            raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},)")
        if mask is not None and not self._ready:
            raise RuntimeError("reset all envs once before a masked reset")
        images_opt = options.get("image")
        if images_opt is not None and len(images_opt) != len(rows):
            raise ValueError(f"options['image'] must hold one image per reset env ({len(rows)}), got {len(images_opt)}")
        if (options.get("prompt") is not None or options.get("negative_prompt") is not None) and mask is not None:
            raise ValueError("a prompt is set for all envs at a full reset, not with reset_mask")
        prompt = world.prompt_options(options)
        self._seed_rows(rows, seed)
        images, poses = world.start_images(images_opt if images_opt is not None else None,
                                           [self._np_randoms[r] for r in rows])
        obs = self._reset_rows(rows, images, prompt)
        infos = {r: world.reset_info(r, images[k], poses[k]) for k, r in enumerate(rows)}
        return obs, stack_infos(infos, self.num_envs)

    def _reset_rows(self, rows: list[int], images: np.ndarray, prompt=(None, None)) -> np.ndarray:
        world = self._world
        noise_seeds = [int(self._np_randoms[r].integers(2**62)) for r in rows]
        tensors = world.to_model_images(images)
        if len(rows) == self.num_envs:
            world.generator.reset(seed=noise_seeds, image=tensors, prompt_embeds=prompt[0],
                                  negative_prompt_embeds=prompt[1], decode=False)
            world.last_frames = images.copy()
        else:
            world.generator.reset_rows(rows, noise_seeds, tensors, decode=False)
            world.last_frames[rows] = images
        world.frame_index[rows] = 0
        self._steps[rows] = 0
        self._needs_reset[rows] = False
        self._ready = True
        latents = world.model.codec.encode_image(tensors) if self.obs_mode == "latent" else None
        observations = world.reset_observation(images, latents)
        if len(rows) == self.num_envs:
            return observations
        full = np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype)
        full[rows] = observations
        return full

    def step(self, actions):
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        with torch_threads(self._world.num_threads):
            return self._step(actions)

    def _step(self, actions):
        world = self._world
        actions = np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"actions must have a leading dimension of num_envs={self.num_envs}, got {tuple(actions.shape)}")
        resetting = np.flatnonzero(self._needs_reset).tolist()
        chunk = torch.stack([
            world.spec.neutral().expand(world.chunk_frames, -1) if i in resetting
            else chunk_actions(actions[i], world.spec, world.chunk_frames) for i in range(self.num_envs)])
        out = world.generator.next_chunk(chunk, decode=self.obs_mode != "latent")
        frames = None if out.frames is None else to_uint8(out.frames).cpu().numpy()
        if frames is not None:
            world.last_frames = frames[:, -1].copy()
        world.frame_index += world.frames_per_chunk
        self._steps += 1
        obs = world.step_observation(out, frames)
        infos = {i: world.step_info(i, out, frames) for i in range(self.num_envs) if i not in resetting}
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        if self.reward_fn is not None:
            for i, info in infos.items():
                rewards[i] = float(self.reward_fn(obs[i], info))
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = (self._steps >= self.max_episode_steps) if self.max_episode_steps else np.zeros(self.num_envs, bool)
        if resetting:  # next-step autoreset: these envs restart instead of stepping (reward 0, the reset info)
            images, poses = world.start_images(None, [self._np_randoms[r] for r in resetting])
            obs[resetting] = self._reset_rows(resetting, images)[resetting]
            truncated[resetting] = False
            infos.update({r: world.reset_info(r, images[k], poses[k]) for k, r in enumerate(resetting)})
        self._needs_reset = terminated | truncated
        return obs, rewards, terminated, truncated, stack_infos(infos, self.num_envs)

    def render(self):
        if self.render_mode != "rgb_array" or self._world.last_frames is None:
            return None
        return self._world.last_frames.copy()

    def close_extras(self, **kwargs):
        if getattr(self, "_world", None) is not None:
            self._world.close()
            self._world = None
