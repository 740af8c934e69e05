"""Followers (lower level): SB3 SAC / discrete SAC / soft DQN / PPO / A2C behind the `Follower` seam.

Layout: :mod:`~bilevel_rl.followers.base` (the seam), :mod:`~bilevel_rl.followers.sb3_base` (shared SB3 machinery),
:mod:`~bilevel_rl.followers.off_policy` / :mod:`~bilevel_rl.followers.sac` (relabelling replay buffers, SAC and
discrete SAC), :mod:`~bilevel_rl.followers.soft_dqn` (regularised DQN), :mod:`~bilevel_rl.followers.on_policy`
(learned-reward wrapper, PPO and A2C), :mod:`~bilevel_rl.followers.registry` (names) and
:mod:`~bilevel_rl.followers.algo_kwargs` (config checks).
"""

from bilevel_rl.followers.algo_kwargs import check_algo_kwargs
from bilevel_rl.followers.base import Follower, TransitionRecorder
from bilevel_rl.followers.off_policy import OffPolicyFollower
from bilevel_rl.followers.on_policy import A2CFollower, OnPolicyFollower, PPOFollower
from bilevel_rl.followers.registry import FOLLOWERS, follower_class, make_follower
from bilevel_rl.followers.sac import DiscreteSACFollower, SACFollower
from bilevel_rl.followers.sb3_base import SB3Follower
from bilevel_rl.followers.soft_dqn import SoftDQNFollower

__all__ = [
    "FOLLOWERS",
    "A2CFollower",
    "DiscreteSACFollower",
    "Follower",
    "OffPolicyFollower",
    "OnPolicyFollower",
    "PPOFollower",
    "SACFollower",
    "SB3Follower",
    "SoftDQNFollower",
    "TransitionRecorder",
    "check_algo_kwargs",
    "follower_class",
    "make_follower",
]
