"""The papers' Atari reward CNNs: ``r_φ(s, a) = head(s)[a]`` on channels-first uint8 frame stacks.

Two architectures, selected by ``arch``:

* ``"sobirl"`` — SoBiRL App. J.2 and the authors' released code (``CusCnnRewardNet``): four
  conv blocks with kernels 7/5/3/3, strides 3/2/1/1, 16 filters each, no padding, each block
  ``Conv → BatchNorm2d → LeakyReLU(0.01) → Dropout(0.5)``; spatial size 84→26→11→9→7; flatten 784 →
  ``Linear(784, 64) → LeakyReLU(0.01) → Linear(64, |A|)``.
* ``"pbrl"`` — PBRL App. E.2 (its "reward predictor"): the same conv geometry with ReLU
  and no BatchNorm, flatten 784 → ``FC 64 → ReLU → Dropout(0.5) → FC |A|`` (dropout "between fully connected
  layers").

Both papers use an action-indexed (per-action) head: the network sees the state only and outputs one reward per
action, so ``E_{a~π} r(s, a) = Σ_a π(a|s) head(s)[a]`` costs one forward pass (:meth:`action_rewards`).
``per_action=False`` gives a state-only reward ``r_φ(s)`` instead (one output, the same for every action), the
Atari predictor of Christiano et al. 2017 (§3.3, "the reward predictor ... takes as input a stack of frames").
With few labels a per-action head can learn action preferences that hold in no state, and a follower then
collapses onto the favoured action; a state-only reward can only be earned by reaching states.
"""

from __future__ import annotations

from typing import Literal, get_args

import gymnasium as gym
import torch
from torch import nn
from typing_extensions import override

from bilevel_rl.reward_models.base import RewardModel

CNNArch = Literal["sobirl", "pbrl"]
"""Names of the reward CNN architectures."""

#: ``(kernel, stride)`` of the four conv layers shared by both papers' reward CNNs (no padding).
REWARD_CONV_GEOMETRY: tuple[tuple[int, int], ...] = ((7, 3), (5, 2), (3, 1), (3, 1))
#: Filters per conv layer in both papers' reward CNNs.
REWARD_CONV_FILTERS = 16
#: Width of the hidden fully connected layer in both papers' reward CNNs.
REWARD_FC_HIDDEN = 64
#: Dropout probability in both papers (conv blocks for SoBiRL, between the FC layers for PBRL).
REWARD_DROPOUT = 0.5
#: LeakyReLU slope of the SoBiRL reward net (App. J.2).
SOBIRL_LEAKY_SLOPE = 0.01

_IMAGE_SIZE = 84


def is_atari_stack_space(space: gym.spaces.Space) -> bool:
    """Whether ``space`` is a channels-first ``(C, 84, 84)`` Box: what the papers' Atari CNNs take."""
    shape = getattr(space, "shape", None)
    return (
        isinstance(space, gym.spaces.Box)
        and shape is not None
        and len(shape) == 3
        and shape[1:] == (_IMAGE_SIZE, _IMAGE_SIZE)
    )


def _conv_out(size: int) -> int:
    for kernel, stride in REWARD_CONV_GEOMETRY:
        size = (size - kernel) // stride + 1
    return size


class AtariCNNRewardModel(RewardModel):
    """Per-action Atari reward CNN ``r_φ(s, a) = head(s)[a]`` (SoBiRL App. J.2 or PBRL App. E.2).

    Input is the channels-first ``uint8`` stack ``(B, C, 84, 84)`` (``C = 4`` frames, newest last). It is cast to
    float and divided by 255 **exactly once**, at the top of :meth:`action_rewards`. The released SoBiRL code
    divides twice on the path that evaluates the policy for the score term; here no caller may pre-scale.

    Train/eval modes: the leader trains the model in train mode (BatchNorm batch statistics, dropout on), and
    followers receive rewards through :meth:`RewardModel.relabel`, which switches to eval mode (BatchNorm running
    statistics, dropout off), so relabelling is deterministic. **Deviation:** the released SoBiRL code queried the
    reward net in train mode when SAC relabelled its batches (dropout 0.5 active, BatchNorm over the 64 sampled
    transitions); we use eval mode.

    Weights use PyTorch's default initialisation: neither paper specifies one for the reward net.

    Inputs are images, so :meth:`fit_input_normalization` stays a no-op (scaling is ``/255`` only).

    Args:
        arch: ``"sobirl"`` or ``"pbrl"`` (see the module docstring for the layers).
        observation_space: ``Box`` of shape ``(C, 84, 84)`` (channels first).
        action_space: ``Discrete``; the head has ``action_space.n`` outputs.
        per_action: ``True`` (both papers) for one output per action, ``False`` for a state-only ``r_φ(s)``.

    Raises:
        ValueError: on an unknown ``arch``, a non-``(C, 84, 84)`` Box observation space or a non-Discrete action
            space.
    """

    def __init__(
        self,
        arch: CNNArch,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        per_action: bool = True,
    ) -> None:
        super().__init__()
        if arch not in get_args(CNNArch):
            raise ValueError(f"reward_model.arch: unknown Atari CNN {arch!r} (choose sobirl or pbrl)")
        shape = getattr(observation_space, "shape", None)
        if not is_atari_stack_space(observation_space):
            raise ValueError(
                f"reward_model: the Atari CNN needs a channels-first Box observation space (C, 84, 84), got {shape}"
            )
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"reward_model: the Atari CNN needs a Discrete action space, got {action_space}")
        self.arch: CNNArch = arch
        self.in_channels = int(observation_space.shape[0])  # type: ignore[index]  # a (C, 84, 84) Box, checked above
        self.n_actions = int(action_space.n)
        self.per_action = bool(per_action)
        n_out = self.n_actions if self.per_action else 1
        layers: list[nn.Module] = []
        last = self.in_channels
        for kernel, stride in REWARD_CONV_GEOMETRY:
            layers.append(nn.Conv2d(last, REWARD_CONV_FILTERS, kernel_size=kernel, stride=stride))
            if arch == "sobirl":
                layers += [
                    nn.BatchNorm2d(REWARD_CONV_FILTERS),
                    nn.LeakyReLU(SOBIRL_LEAKY_SLOPE),
                    nn.Dropout(REWARD_DROPOUT),
                ]
            else:
                layers.append(nn.ReLU())
            last = REWARD_CONV_FILTERS
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.n_flatten = REWARD_CONV_FILTERS * _conv_out(_IMAGE_SIZE) ** 2  # 16 * 7 * 7 = 784
        head: list[nn.Module]
        if arch == "sobirl":
            head = [
                nn.Linear(self.n_flatten, REWARD_FC_HIDDEN),
                nn.LeakyReLU(SOBIRL_LEAKY_SLOPE),
                nn.Linear(REWARD_FC_HIDDEN, n_out),
            ]
        else:
            head = [
                nn.Linear(self.n_flatten, REWARD_FC_HIDDEN),
                nn.ReLU(),
                nn.Dropout(REWARD_DROPOUT),
                nn.Linear(REWARD_FC_HIDDEN, n_out),
            ]
        self.head = nn.Sequential(*head)

    @override
    @property
    def action_ndim(self) -> int:
        return 0

    @override
    def action_rewards(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw rewards of every action in one forward pass: ``(B, C, 84, 84)`` uint8 → ``(B, |A|)``.

        The leader uses it for ``E_{a~π} r(s, a) = Σ_a π(a|s) r(s, a)`` (SoBiRL eq. 99, App. J.1). The only
        ``/255`` of the whole pipeline happens here.
        """
        x = obs.float() / 255.0
        out = self.head(self.conv(x))
        return out if self.per_action else out.expand(-1, self.n_actions)

    @override
    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.action_rewards(obs).gather(1, actions.reshape(-1, 1).long()).squeeze(1)


def make_cnn_reward_model(
    arch: CNNArch, observation_space: gym.spaces.Space, action_space: gym.spaces.Space, per_action: bool = True
) -> AtariCNNRewardModel:
    """Build one of the papers' Atari reward CNNs (``"sobirl"`` or ``"pbrl"``), per-action or state-only."""
    return AtariCNNRewardModel(arch, observation_space, action_space, per_action)
