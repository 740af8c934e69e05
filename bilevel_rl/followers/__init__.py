"""Followers (lower level): SB3 SAC / PPO / A2C behind the `Follower` seam."""

from bilevel_rl.followers.base import Follower, TransitionRecorder
from bilevel_rl.followers.sb3 import SB3Follower, make_follower

__all__ = ["Follower", "SB3Follower", "TransitionRecorder", "make_follower"]
