"""The pipeline's stages, one module each (docs/design.md §7)."""

from .stage0_bidirectional import BidirectionalStage
from .stage1_teacher_forcing import TeacherForcingStage
from .stage2a_ode import CausalODEStage
from .stage2b_consistency import CausalConsistencyStage
from .stage2c_rollout import SelfRolloutStage
from .stage3_dmd import DMDStage

STAGE_CLASSES = {"stage0": BidirectionalStage, "stage1": TeacherForcingStage, "stage2a": CausalODEStage,
                 "stage2b": CausalConsistencyStage, "stage2c": SelfRolloutStage, "stage3": DMDStage}
