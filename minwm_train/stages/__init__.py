"""The pipeline's stages, one module each (DESIGN.md §6)."""

from .stage0_bidirectional import BidirectionalStage
from .stage1_teacher_forcing import TeacherForcingStage

STAGE_CLASSES = {"stage0": BidirectionalStage, "stage1": TeacherForcingStage}
