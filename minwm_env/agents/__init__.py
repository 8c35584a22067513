"""Agents trained inside the world model and scored in the true world (issue 21).

Tasks with one definition in both worlds (:mod:`.tasks`), their environments in either world
(:mod:`.envs`), and the command that trains PPO in ``minwm/World-v0``, scores it in
``minwm/GroundTruth-v0`` on held-out layouts beside PPO trained in the truth and a random
policy (:mod:`.train`, ``minwm-agents``; docs/agents.md).

Importing this package registers ``minwm/Reach-v0``, ``minwm/Face-v0`` and
``minwm/StopInFront-v0`` (:class:`~.envs.TaskEnv`; ``world="model"`` or ``"truth"``).
"""

from gymnasium.envs.registration import register, registry

from .envs import RowsVecEnv, TaskEnv, TaskRows, TaskRowsEnv, TaskWrapper, rows_vec_env
from .tasks import TASKS, Episode, Task, episode_plan, load_layout, make_task, parse_layouts

__all__ = ["TASKS", "Episode", "RowsVecEnv", "Task", "TaskEnv", "TaskRows", "TaskRowsEnv", "TaskWrapper",
           "episode_plan", "load_layout", "make_task", "parse_layouts", "rows_vec_env"]

for _id, _task in (("minwm/Reach-v0", "reach"), ("minwm/Face-v0", "face"), ("minwm/StopInFront-v0", "stop_in_front")):
    if _id not in registry:
        register(id=_id, entry_point="minwm_env.agents.envs:TaskEnv", kwargs={"task": _task})
