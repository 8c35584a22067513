"""minwm runtime: streaming world models behind a Gymnasium API.

Importing this package registers the environments ``minwm/GroundTruth-v0`` (a rendered 3D
world) and ``minwm/World-v0`` (the world model), and, before torch loads, makes OpenMP's waiting
threads sleep instead of spin (``minwm_env.threads``: a shared CPU stays fast; yours win).
"""

from . import threads

threads.apply_import_defaults()  # first: OpenMP reads its settings once, when torch loads

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

if "minwm/GroundTruth-v0" not in registry:
    register(id="minwm/GroundTruth-v0", entry_point="minwm_env.envs.ground_truth:GroundTruthEnv",
             max_episode_steps=200)

if "minwm/ArmTruth-v0" not in registry:
    register(id="minwm/ArmTruth-v0", entry_point="minwm_env.envs.arm:ArmTruthEnv", max_episode_steps=200)

if "minwm/World-v0" not in registry:
    register(id="minwm/World-v0", entry_point="minwm_env.envs.world_model:WorldModelEnv",
             vector_entry_point="minwm_env.envs.world_model:WorldModelVectorEnv", max_episode_steps=200)
