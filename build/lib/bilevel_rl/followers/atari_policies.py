"""Atari feature extractors for SB3 followers: the PBRL A2C actor-critic trunk and a config-name registry.

PBRL App. E.2 (the actor-critic with a shared trunk) uses a trunk that differs from SB3's
``NatureCNN`` (32/64/64 filters, FC 512): conv 8/5/4/4 with strides 4/2/1/1 and 16/32/32/32 filters, ReLU,
spatial size 84→20→8→5→2, flatten 128 → FC 256 → ReLU, shared by a linear policy head and a linear value head.

Hydra configs name extractors by string (``features_extractor_class: pbrl_cnn``); :func:`resolve_policy_kwargs`
turns the string into the class before the kwargs reach SB3. A dotted path
(``bilevel_rl.followers.atari_policies.PBRLAtariCNN``) is accepted too.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableSequence
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn
from typing_extensions import override

from bilevel_rl.reward_models.cnn import is_atari_stack_space

#: ``(filters, kernel, stride)`` of the PBRL actor-critic trunk (PBRL App. E.2), no padding.
PBRL_TRUNK_CONVS: tuple[tuple[int, int, int], ...] = ((16, 8, 4), (32, 5, 2), (32, 4, 1), (32, 4, 1))
#: Width of the trunk's fully connected layer (PBRL App. E.2): the extractor's ``features_dim``.
PBRL_TRUNK_FEATURES = 256

_IMAGE_SIZE = 84


class PBRLAtariCNN(BaseFeaturesExtractor):
    """PBRL's shared A2C actor-critic trunk (App. E.2): 4 convs + FC 256, ``features_dim = 256``.

    Meant for SB3's ``CnnPolicy`` with ``net_arch=dict(pi=[], vf=[])`` (see :func:`a2c_pbrl_policy_kwargs`), so
    the policy and value heads are single linear layers on the shared 256 features, as in the paper.

    The extractor does **not** scale its input: SB3's ``preprocess_obs`` already divides uint8 image observations
    by 255 when ``normalize_images=True`` (the ``CnnPolicy`` default), and scaling happens exactly once.

    Weights: neither paper specifies an initialisation; SB3's ``ActorCriticPolicy`` applies its default orthogonal
    initialisation (gain √2 on the extractor) when ``ortho_init=True``.

    Args:
        observation_space: channels-first ``Box`` of shape ``(C, 84, 84)``.
        features_dim: width of the final FC layer (256 in the paper).
        normalized_image: accepted for SB3 compatibility (SB3 passes it when ``normalize_images=False``); the
            extractor never rescales either way.

    Raises:
        ValueError: if the observation space is not a ``(C, 84, 84)`` Box.
    """

    def __init__(
        self, observation_space: gym.Space, features_dim: int = PBRL_TRUNK_FEATURES, normalized_image: bool = False
    ) -> None:
        shape = getattr(observation_space, "shape", None)
        if not is_atari_stack_space(observation_space):
            raise ValueError(f"follower: the PBRL Atari CNN needs a channels-first Box (C, 84, 84), got {shape}")
        super().__init__(observation_space, features_dim)
        layers: list[nn.Module] = []
        last = int(observation_space.shape[0])  # type: ignore[index]  # a (C, 84, 84) Box, checked above
        size = _IMAGE_SIZE
        for filters, kernel, stride in PBRL_TRUNK_CONVS:
            layers += [nn.Conv2d(last, filters, kernel_size=kernel, stride=stride), nn.ReLU()]
            last = filters
            size = (size - kernel) // stride + 1
        self.cnn = nn.Sequential(*layers, nn.Flatten())
        self.n_flatten = last * size * size  # 32 * 2 * 2 = 128
        self.linear = nn.Sequential(nn.Linear(self.n_flatten, features_dim), nn.ReLU())

    @override
    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))


#: Config names of the image feature extractors a follower may use.
FEATURE_EXTRACTORS: dict[str, type[BaseFeaturesExtractor]] = {"pbrl_cnn": PBRLAtariCNN, "nature_cnn": NatureCNN}


def a2c_pbrl_policy_kwargs() -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for A2C with PBRL's shared trunk and linear heads (PBRL App. E.2)."""
    return {"features_extractor_class": PBRLAtariCNN, "net_arch": {"pi": [], "vf": []}}


def _resolve_extractor(name: str) -> type[BaseFeaturesExtractor]:
    if name in FEATURE_EXTRACTORS:
        return FEATURE_EXTRACTORS[name]
    module_name, _, attr = name.rpartition(".")
    if module_name:
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, BaseFeaturesExtractor):
            return cls
    choices = ", ".join(sorted(FEATURE_EXTRACTORS))
    raise ValueError(f"follower.policy_kwargs.features_extractor_class: unknown extractor {name!r} (choose {choices})")


def resolve_policy_kwargs(d: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``d`` with a string ``features_extractor_class`` replaced by the class.

    The string is a :data:`FEATURE_EXTRACTORS` name (``"pbrl_cnn"``, ``"nature_cnn"``) or a dotted path to a
    ``BaseFeaturesExtractor`` subclass. Nested mappings and lists (e.g. ``net_arch``) are copied into plain
    ``dict``/``list`` (an OmegaConf ``DictConfig`` may be passed directly), so the caller's mapping is never
    modified.

    Raises:
        ValueError: on an unknown extractor name.
    """
    out = {k: _plain(v) for k, v in d.items()}
    cls = out.get("features_extractor_class")
    if isinstance(cls, str):
        out["features_extractor_class"] = _resolve_extractor(cls)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, MutableSequence):  # list or OmegaConf ListConfig; tuples are kept as they are
        return [_plain(v) for v in value]
    return value
