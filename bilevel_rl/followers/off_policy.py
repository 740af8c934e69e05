"""Off-policy SB3 followers: rewards relabelled by the current reward model whenever a replay batch is sampled.

Stored rewards therefore never go stale: :class:`~bilevel_rl.followers.relabel.RelabelingReplayBuffer` for vector
observations, :class:`~bilevel_rl.followers.frame_buffer.FrameStackReplayBuffer` (each Atari frame stored once)
for images. The concrete followers are in :mod:`bilevel_rl.followers.sac` and
:mod:`bilevel_rl.followers.soft_dqn`.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from typing_extensions import override

from bilevel_rl.followers.base import RewardMix
from bilevel_rl.followers.buffer_io import buffer_state, load_buffer_state
from bilevel_rl.followers.frame_buffer import FrameStackReplayBuffer, SupportsRelabel
from bilevel_rl.followers.relabel import RelabelingReplayBuffer
from bilevel_rl.followers.sb3_base import SB3Follower
from bilevel_rl.reward_models.base import RewardModel

# the reward cache is not trusted after a restore (_fingerprint is dropped): the first sample recomputes it, exactly
# as the uninterrupted run does after the leader step before the checkpoint; the rest is rebuilt by set_reward_model
_BUFFER_SKIP = frozenset({"reward_model", "mix", "action_low", "action_high", "device", "_fingerprint"})


class FlatActionRewards:
    """A reward model seen through flat discrete actions: replay buffers store them as ``(B, 1)`` floats.

    The relabeller of the Discrete-action off-policy followers (discrete SAC, soft DQN).
    """

    def __init__(self, model: RewardModel) -> None:
        self.model = model

    def relabel(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``r(s, a)`` with the stored actions as integer indices ``(B,)``."""
        return self.model.relabel(obs, torch.as_tensor(actions).reshape(-1).long())

    def fingerprint(self) -> Any:
        """The wrapped model's fingerprint (when it changes, cached rewards are stale)."""
        return self.model.fingerprint()


class OffPolicyFollower(SB3Follower):
    """An SB3 off-policy algorithm whose replay buffer relabels rewards at sample time.

    ``reward_clip`` (image observations only) clamps the relabelled rewards to ``[-c, c]``.
    """

    @property
    def replay_buffer(self) -> RelabelingReplayBuffer | FrameStackReplayBuffer:
        """The model's relabelling replay buffer."""
        assert isinstance(self.model, OffPolicyAlgorithm)
        buf = self.model.replay_buffer
        assert isinstance(buf, RelabelingReplayBuffer | FrameStackReplayBuffer)
        return buf

    @override
    def _extra_algo_kwargs(self, reward_clip: float | None) -> dict[str, Any]:
        if self.image_obs:
            return {"replay_buffer_class": FrameStackReplayBuffer, "replay_buffer_kwargs": {"reward_clip": reward_clip}}
        return {"replay_buffer_class": RelabelingReplayBuffer}

    @override
    def _policy_optimizer(self) -> torch.optim.Optimizer:
        """The actor's optimizer (critics and temperature have their own)."""
        return self.model.actor.optimizer  # type: ignore[attr-defined,no-any-return]

    def _relabeler(self, reward_model: RewardModel) -> SupportsRelabel:
        """The reward model as the replay buffer calls it (actions as the buffer stores them)."""
        return reward_model

    @override
    def set_reward_model(self, reward_model: RewardModel, mix: RewardMix | None = None) -> None:
        mix = mix or RewardMix()
        buf = self.replay_buffer
        if isinstance(buf, FrameStackReplayBuffer) and mix != RewardMix():
            raise ValueError("objective: image followers train on the learned reward alone (no environment reward mix)")
        self.reward_model = reward_model
        self._reward_mix = mix
        if isinstance(buf, RelabelingReplayBuffer):
            buf.mix = mix
            buf._fingerprint = None  # every cached reward is stale under a new mix
        buf.reward_model = self._relabeler(reward_model)  # type: ignore[assignment]

    @override
    def set_reward_model_to_true_reward(self) -> None:
        self.reward_model = None
        self.true_reward_only = True
        self._reward_mix = RewardMix(env=1.0, model=0.0)
        self.replay_buffer.reward_model = None

    @override
    def state_dict(self) -> dict[str, Any]:
        """:meth:`SB3Follower.state_dict` plus ``replay_buffer`` (its filled rows only)."""
        state = super().state_dict()
        buf = self.replay_buffer
        if isinstance(buf, FrameStackReplayBuffer):
            state["replay_buffer"] = buf.state_dict()
        else:
            state["replay_buffer"] = buffer_state(buf, set(_BUFFER_SKIP))
        return state

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        buf = self.replay_buffer
        if isinstance(buf, FrameStackReplayBuffer):
            buf.load_state_dict(state["replay_buffer"])
        else:
            load_buffer_state(buf, state["replay_buffer"])
            buf._fingerprint = None
