"""Trajectories, segments, teachers and the preference buffer."""

from bilevel_rl.data.preference_buffer import PreferenceBuffer
from bilevel_rl.data.segments import PreferencePairs, SegmentBatch, fragment, make_pairs
from bilevel_rl.data.teachers import BradleyTerryTeacher, OracleTeacher, Teacher, make_teacher
from bilevel_rl.data.trajectories import TrajectoryBatch

__all__ = [
    "BradleyTerryTeacher",
    "OracleTeacher",
    "PreferenceBuffer",
    "PreferencePairs",
    "SegmentBatch",
    "Teacher",
    "TrajectoryBatch",
    "fragment",
    "make_pairs",
    "make_teacher",
]
