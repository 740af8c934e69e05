"""Tax design for a macroeconomic model: one household (the follower) under a leader's taxes.

The environment of Thoma et al., *Contextual bilevel reinforcement learning for incentive alignment* (NeurIPS
2024), §5.2 "Tax Design for Macroeconomic Models", App. B ("Tax Design for Macroeconomic Modeling", the CB-RL
formulation) and App. F.3.1 (constants). Where the paper is silent or inconsistent, the authors' public HPGD code
(``src/environments/TaxDesign.py`` and the ``experiment_tax_design_*`` configs) decides; every such point is listed
in ``docs/theory/tax_design.md``.

Notation (§5.2): ``s`` assets, ``n`` hours worked, ``c_i`` the (tax-inclusive) expenditure on good ``i``, ``x`` the
income tax, ``y_i`` the value-added tax (VAT) on good ``i``, ``α`` the household's Cobb-Douglas preferences (the
context ``ξ``). The leader's parameter vector is ``tax = (x, y_1, y_2, y_3)``.

Importing this module registers ``TaxDesign-v0`` with gymnasium (200-step time limit).
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ACTION_DIMS",
    "CONTEXTS",
    "N_ACTIONS",
    "TAX_NAMES",
    "TaxDesignEnv",
    "asset_utility",
    "asset_welfare",
    "decode_action",
    "encode_action",
    "household_utility",
    "next_assets_mean",
    "sample_next_assets",
    "social_welfare",
    "tax_revenue",
    "transition_log_prob",
    "validate_tax",
]

FloatArray = NDArray[np.float64]

N_GOODS = 3
"""Number of consumption goods ``M`` (§5.2)."""
PRICES: FloatArray = np.ones(N_GOODS)
"""Unit prices ``p_i = 1`` (§5.2)."""
HOURS_LEVELS = 10
"""Cardinality of the hours grid (App. F.3.1)."""
HOURS_STEP = 0.89
"""Hours grid spacing: ``n ∈ {0, 0.89, ..., 8.01}`` (the authors' configs; the paper says range [0, 8])."""
CONSUMPTION_LEVELS = 5
"""Cardinality of each good's expenditure grid (App. F.3.1)."""
CONSUMPTION_STEP = 1.25
"""Expenditure grid spacing: ``c_i ∈ {0, 1.25, 2.5, 3.75, 5}`` (App. F.3.1: range [0, 5])."""
ACTION_DIMS: tuple[int, ...] = (HOURS_LEVELS,) + (CONSUMPTION_LEVELS,) * N_GOODS
"""Per-dimension sizes of the product action space: ``(hours, good 1, good 2, good 3)``."""
N_ACTIONS = int(np.prod(ACTION_DIMS))
"""Size of the flat ``Discrete`` encoding of the product (1250)."""
CONTEXTS: FloatArray = np.array([[0.6, 0.3, 0.1], [0.1, 0.7, 0.2]])
"""Cobb-Douglas preferences ``α`` of the two equal-sized household groups (§5.2, App. F.3.1)."""
WORK_DISUTILITY = 0.1
"""``θ`` in ``u_t`` (App. F.3.1)."""
WELFARE_TAX_WEIGHT = 5.0
"""``ϕ`` in ``v_t`` (App. F.3.1)."""
WAGE = 1.0
"""Wage ``w`` (App. F.3.1)."""
NOISE_STD = 5.0
"""Standard deviation ``ς`` of the asset noise (App. F.3.1)."""
ASSET_LOW, ASSET_HIGH = -100.0, 100.0
"""Asset range (§5.2)."""
INITIAL_ASSET_STD = math.sqrt(2.0)
"""``s_0 ~ N(0, √2)`` with ``√2`` the standard deviation (App. F.3.1; the code's ``sqrt(2) * normal``)."""
MAX_EPISODE_STEPS = 200
"""Episodes are truncated after 200 steps (App. F.3.1)."""
MAX_TAX = 2.0
"""Upper end of the tax domain ``[0, 2]`` (App. F.3.1 and the code; §5.2 says ``[0, 3]``)."""
DEFAULT_TAX: tuple[float, ...] = (0.3,) * (1 + N_GOODS)
"""All tax rates are initialised at 0.3 (App. F.3.1)."""
TAX_NAMES: tuple[str, ...] = ("income_tax",) + tuple(f"vat_{i + 1}" for i in range(N_GOODS))
"""Names of the entries of the leader's vector ``tax = (x, y_1, y_2, y_3)``."""


# ---------------------------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------------------------


def decode_action(action: ArrayLike) -> tuple[NDArray[np.int64], FloatArray, FloatArray]:
    """Decode flat actions into grid indices, hours worked and expenditures.

    The flat index is the C-order (row-major) ravel of ``(i_n, i_1, i_2, i_3)`` over :data:`ACTION_DIMS`, as the
    authors' ``jnp.unravel_index(a, [10, 5, 5, 5])``: ``a = ((i_n·5 + i_1)·5 + i_2)·5 + i_3``. Hours are
    ``n = 0.89·i_n`` and expenditures ``c_i = 1.25·i_i`` (App. F.3.1).

    Args:
        action: Flat action(s) in ``[0, 1250)``, any shape ``S``.

    Returns:
        ``(indices, hours, consumption)`` with shapes ``S + (4,)``, ``S`` and ``S + (3,)``.

    Raises:
        ValueError: If an action is outside ``[0, 1250)``.
    """
    a = np.asarray(action)
    if not np.issubdtype(a.dtype, np.integer) or np.any(a < 0) or np.any(a >= N_ACTIONS):
        raise ValueError(f"action: expected integers in [0, {N_ACTIONS}), got {action!r}")
    indices = np.stack(np.unravel_index(a.astype(np.int64), ACTION_DIMS), axis=-1).astype(np.int64)
    hours = HOURS_STEP * indices[..., 0].astype(np.float64)
    consumption = CONSUMPTION_STEP * indices[..., 1:].astype(np.float64)
    return indices, hours, consumption


def encode_action(hours_index: int, consumption_indices: tuple[int, ...] | list[int]) -> int:
    """Flat action of grid indices ``(i_n, (i_1, i_2, i_3))``, the inverse of :func:`decode_action`.

    Args:
        hours_index: Index ``i_n`` in ``[0, 10)``.
        consumption_indices: Indices ``i_1, i_2, i_3`` in ``[0, 5)``.

    Returns:
        The flat action ``((i_n·5 + i_1)·5 + i_2)·5 + i_3``.
    """
    return int(np.ravel_multi_index((hours_index, *consumption_indices), ACTION_DIMS))


# ---------------------------------------------------------------------------------------------------------------
# Rewards (§5.2, App. F.3.1)
# ---------------------------------------------------------------------------------------------------------------


def asset_utility(assets: ArrayLike) -> FloatArray:
    """Household value of assets ``σ(s) = log(s/20 + 1)`` for ``s > 0`` and ``σ(s) = s`` for ``s ≤ 0``.

    App. F.3.1 writes ``σ(s) = max(0, log(s/20 + 1))``, which is undefined for ``s ≤ −20``; the authors' code uses
    ``s`` itself for ``s ≤ 0`` (debt is penalised linearly), which is followed here.
    """
    s = np.asarray(assets, dtype=np.float64)
    return np.where(s > 0.0, np.log(np.maximum(s, 0.0) / 20.0 + 1.0), s)


def asset_welfare(assets: ArrayLike) -> FloatArray:
    """Leader's value of assets ``ω(s) = min(s, 0)`` (App. F.3.1)."""
    return np.minimum(np.asarray(assets, dtype=np.float64), 0.0)


def household_utility(
    assets: ArrayLike,
    hours: ArrayLike,
    consumption: ArrayLike,
    vat: ArrayLike,
    preferences: ArrayLike,
    work_disutility: float = WORK_DISUTILITY,
) -> FloatArray:
    """Follower reward ``u_t = σ(s_t) − θ n_t² + Π_i (c_{i,t} / (p_i (1 + y_i)))^{α_i}`` (§5.2).

    ``c_i / (p_i (1 + y_i))`` is the quantity bought with the tax-inclusive expenditure ``c_i``; the product is the
    Cobb-Douglas utility, zero as soon as one good is not bought. VAT enters the follower's reward only here.

    Args:
        assets: ``s_t``, shape ``S``.
        hours: ``n_t``, shape ``S``.
        consumption: ``c_t``, shape ``S + (3,)``.
        vat: ``y``, shape ``(3,)`` (or broadcastable to ``S + (3,)``).
        preferences: ``α``, shape ``(3,)`` (or broadcastable).
        work_disutility: ``θ``.

    Returns:
        ``u_t``, shape ``S``.
    """
    c = np.asarray(consumption, dtype=np.float64)
    quantities = c / (PRICES * (1.0 + np.asarray(vat, dtype=np.float64)))
    cobb_douglas = np.prod(quantities ** np.asarray(preferences, dtype=np.float64), axis=-1)
    n = np.asarray(hours, dtype=np.float64)
    return asset_utility(assets) - work_disutility * n**2 + cobb_douglas


def tax_revenue(
    hours: ArrayLike, consumption: ArrayLike, income_tax: ArrayLike, vat: ArrayLike, wage: float = WAGE
) -> FloatArray:
    """Tax revenue of one step ``Σ_i c_{i,t} y_i / (1 + y_i) + w x n_t`` (the argument of the log in ``v_t``, §5.2).

    Args:
        hours: ``n_t``, shape ``S``.
        consumption: ``c_t``, shape ``S + (3,)``.
        income_tax: ``x``, scalar (or broadcastable to ``S``).
        vat: ``y``, shape ``(3,)`` (or broadcastable to ``S + (3,)``).
        wage: ``w``.

    Returns:
        The revenue, shape ``S``.
    """
    y = np.asarray(vat, dtype=np.float64)
    c = np.asarray(consumption, dtype=np.float64)
    return np.sum(c * y / (1.0 + y), axis=-1) + wage * np.asarray(income_tax, dtype=np.float64) * np.asarray(hours)


def social_welfare(
    assets: ArrayLike,
    hours: ArrayLike,
    consumption: ArrayLike,
    income_tax: ArrayLike,
    vat: ArrayLike,
    tax_weight: float = WELFARE_TAX_WEIGHT,
    wage: float = WAGE,
) -> FloatArray:
    """Leader reward ``v_t = ω(s_t) + Σ_i c_{i,t}/(1 + y_i) + ϕ log(1 + Σ_i c_{i,t} y_i/(1 + y_i) + w x n_t)``.

    §5.2 defines ``v_t`` without the ``1 +`` inside the log (``−∞`` at zero revenue); the authors' code shifts the
    argument by one, which is followed here. The code's consumption term ``15 · mean_i(c_i/(1+y_i)) / 5`` equals
    ``Σ_i c_i/(1+y_i)`` for three goods and a maximal expenditure of 5.

    Args:
        assets: ``s_t``, shape ``S``.
        hours: ``n_t``, shape ``S``.
        consumption: ``c_t``, shape ``S + (3,)``.
        income_tax: ``x``, scalar (or broadcastable to ``S``).
        vat: ``y``, shape ``(3,)`` (or broadcastable to ``S + (3,)``).
        tax_weight: ``ϕ``.
        wage: ``w``.

    Returns:
        ``v_t``, shape ``S``.
    """
    y = np.asarray(vat, dtype=np.float64)
    c = np.asarray(consumption, dtype=np.float64)
    net_consumption = np.sum(c / (1.0 + y), axis=-1)
    revenue = tax_revenue(hours, consumption, income_tax, vat, wage)
    return asset_welfare(assets) + net_consumption + tax_weight * np.log1p(revenue)


# ---------------------------------------------------------------------------------------------------------------
# Dynamics (§5.2)
# ---------------------------------------------------------------------------------------------------------------


def next_assets_mean(
    assets: ArrayLike,
    hours: ArrayLike,
    consumption: ArrayLike,
    income_tax: ArrayLike,
    wage: float = WAGE,
    low: float = ASSET_LOW,
    high: float = ASSET_HIGH,
) -> FloatArray:
    """Noise-free part of the asset transition ``m_t = clip(s_t + (1 − x) w n_t − Σ_i c_{i,t}, −100, 100)`` (§5.2).

    The income tax ``x`` enters the follower's problem only here. ``∂m_t/∂x = −w n_t`` inside the clip range.

    Args:
        assets: ``s_t``, shape ``S``.
        hours: ``n_t``, shape ``S``.
        consumption: ``c_t``, shape ``S + (3,)``.
        income_tax: ``x``, scalar (or broadcastable to ``S``).
        wage: ``w``.
        low: Lower end of the asset range.
        high: Upper end of the asset range.

    Returns:
        ``m_t``, shape ``S``.
    """
    s = np.asarray(assets, dtype=np.float64)
    income = (1.0 - np.asarray(income_tax, dtype=np.float64)) * wage * np.asarray(hours, dtype=np.float64)
    spent = np.sum(np.asarray(consumption, dtype=np.float64), axis=-1)
    return np.clip(s + income - spent, low, high)


def sample_next_assets(
    rng: np.random.Generator,
    mean: ArrayLike,
    noise_std: float = NOISE_STD,
    low: float = ASSET_LOW,
    high: float = ASSET_HIGH,
) -> FloatArray:
    """Draw ``s_{t+1} = m_t + ε`` with ``ε ~ N(0, ς²)`` truncated so that ``s_{t+1} ∈ [low, high]``.

    §5.2 adds ``ε ~ N(0, ς)`` and clips; the authors' code clips the mean and then draws a truncated normal, which
    is followed here (a density without atoms at the bounds, so ``∇_x log P`` exists everywhere). Sampling is by
    rejection: a first draw ``m_t + ς z`` inside the range is kept, so two means far from the bounds see the same
    noise from the same generator state.

    Args:
        rng: The generator (the env's ``np_random``).
        mean: ``m_t`` from :func:`next_assets_mean`, inside ``[low, high]``.
        noise_std: ``ς``; ``0`` returns ``m_t``.
        low: Lower end of the asset range.
        high: Upper end of the asset range.

    Returns:
        ``s_{t+1}``, the shape of ``mean``.

    Raises:
        ValueError: If a mean lies outside ``[low, high]`` or ``noise_std`` is negative.
    """
    m = np.asarray(mean, dtype=np.float64)
    if noise_std < 0.0:
        raise ValueError(f"noise_std: must be >= 0, got {noise_std}")
    if np.any((m < low) | (m > high)):
        raise ValueError(f"mean: must lie in [{low}, {high}], got {mean!r}")
    if noise_std == 0.0:
        return m.copy()
    flat = m.reshape(-1)
    out = flat + noise_std * rng.standard_normal(flat.shape)
    bad = (out < low) | (out > high)
    while np.any(bad):
        out[bad] = flat[bad] + noise_std * rng.standard_normal(int(bad.sum()))
        bad = (out < low) | (out > high)
    return out.reshape(m.shape)


def transition_log_prob(
    next_assets: ArrayLike,
    mean: ArrayLike,
    noise_std: float = NOISE_STD,
    low: float = ASSET_LOW,
    high: float = ASSET_HIGH,
) -> FloatArray:
    """Log-density of :func:`sample_next_assets`: a normal ``N(m_t, ς²)`` truncated to ``[low, high]``.

    ``log P = −z²/2 − log(ς √(2π)) − log(Φ(b) − Φ(a))`` with ``z = (s' − m)/ς``, ``a = (low − m)/ς`` and
    ``b = (high − m)/ς``; ``−∞`` outside the range. The normaliser depends on ``m_t`` and hence on ``x``.

    Args:
        next_assets: ``s_{t+1}``.
        mean: ``m_t``.
        noise_std: ``ς > 0``.
        low: Lower end of the asset range.
        high: Upper end of the asset range.

    Returns:
        The log-density, broadcast shape of the inputs.
    """
    s1 = np.asarray(next_assets, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64)
    z = (s1 - m) / noise_std
    mass = _normal_cdf((high - m) / noise_std) - _normal_cdf((low - m) / noise_std)
    logp = -0.5 * z**2 - math.log(noise_std * math.sqrt(2.0 * math.pi)) - np.log(mass)
    return np.where((s1 >= low) & (s1 <= high), logp, -np.inf)


def _normal_cdf(z: FloatArray) -> FloatArray:
    """Standard normal CDF ``Φ(z) = erfc(−z/√2)/2``, elementwise."""
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    return np.asarray(0.5 * erfc(-np.asarray(z, dtype=np.float64) / math.sqrt(2.0)), dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Leader parameters
# ---------------------------------------------------------------------------------------------------------------


def validate_tax(tax: ArrayLike | torch.Tensor, max_tax: float = MAX_TAX) -> FloatArray:
    """Check and copy a leader vector ``tax = (x, y_1, y_2, y_3)`` with every entry in ``[0, max_tax]``.

    Args:
        tax: A numpy array, torch tensor or sequence of 4 numbers.
        max_tax: Upper end of the tax domain.

    Returns:
        A float64 copy of shape ``(4,)``.

    Raises:
        ValueError: A one-line message naming the bad entry (or the bad shape).
    """
    if isinstance(tax, torch.Tensor):
        tax = tax.detach().cpu().double().numpy()
    try:
        arr = np.array(tax, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"tax: expected 4 numbers {TAX_NAMES}, got {tax!r}") from None
    if arr.shape != (len(TAX_NAMES),):
        raise ValueError(f"tax: expected shape ({len(TAX_NAMES)},) for {TAX_NAMES}, got shape {arr.shape}")
    for i, (name, value) in enumerate(zip(TAX_NAMES, arr, strict=True)):
        if not np.isfinite(value):
            raise ValueError(f"tax[{i}] ({name})={value} is not finite")
        if not 0.0 <= value <= max_tax:
            raise ValueError(f"tax[{i}] ({name})={value} is outside [0, {max_tax}]")
    return arr


# ---------------------------------------------------------------------------------------------------------------
# The environment
# ---------------------------------------------------------------------------------------------------------------


class TaxDesignEnv(gym.Env[np.ndarray, np.int64]):
    """One household (the follower) of the tax-design problem of §5.2 / App. B, with the leader's taxes held fixed.

    * Observation ``Box([−100, 0], [100, 1], float32)``: ``(s_t, k)`` with ``s_t`` the assets and ``k ∈ {0, 1}``
      the household group (context ``ξ``), whose preferences are ``CONTEXTS[k]``.
    * Action ``Discrete(1250)``: the flat C-order encoding of ``(i_n, i_1, i_2, i_3)`` over
      ``action_dims = (10, 5, 5, 5)`` (:func:`decode_action`); ``n = 0.89·i_n``, ``c_i = 1.25·i_i``.
    * Reset: ``k`` uniform on ``{0, 1}`` and ``s_0 ~ N(0, √2)`` (clipped to the range), both from
      ``self.np_random``. ``options={"context": k, "assets": s}`` pins either (e.g. to restart at a given state).
    * Step: reward ``u_t`` (:func:`household_utility`) at ``(s_t, a_t)``; ``info["leader_reward"] = v_t``
      (:func:`social_welfare`), ``info["tax_revenue"]``, ``info["hours"]``, ``info["consumption"]``,
      ``info["action_indices"]``, ``info["context"]``; then the income tax enters the transition (§5.2)

          ``s_{t+1} = clip(s_t + (1 − x) w n_t − Σ_i c_{i,t}, −100, 100) + ε``,

      ``ε ~ N(0, ς²)`` truncated to keep ``s_{t+1}`` in ``[−100, 100]`` (:func:`next_assets_mean`,
      :func:`sample_next_assets`). Never terminates; truncated after ``max_episode_steps`` (200) steps.

    The leader's vector ``tax = (x, y_1, y_2, y_3)`` is a constructor argument and can be replaced between steps
    with :meth:`set_tax`; the new value applies from the next :meth:`step` on.

    Args:
        tax: Initial ``(x, y_1, y_2, y_3)``; ``None`` gives 0.3 everywhere (App. F.3.1).
        context: Fix the household group to ``0`` or ``1``; ``None`` draws it at every reset.
        noise_std: ``ς`` of the asset noise; ``0`` makes the dynamics deterministic.
        max_tax: Upper end of the tax domain checked by :meth:`set_tax`.
        max_episode_steps: Truncation horizon.

    Raises:
        ValueError: One-line messages naming the bad argument.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    action_dims: tuple[int, ...] = ACTION_DIMS
    contexts: FloatArray = CONTEXTS

    def __init__(
        self,
        tax: ArrayLike | torch.Tensor | None = None,
        context: int | None = None,
        noise_std: float = NOISE_STD,
        max_tax: float = MAX_TAX,
        max_episode_steps: int = MAX_EPISODE_STEPS,
    ) -> None:
        if not (math.isfinite(max_tax) and max_tax > 0.0):
            raise ValueError(f"max_tax: must be a positive number, got {max_tax!r}")
        if not (math.isfinite(noise_std) and noise_std >= 0.0):
            raise ValueError(f"noise_std: must be a number >= 0, got {noise_std!r}")
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps: must be a positive integer, got {max_episode_steps!r}")
        self.max_tax = float(max_tax)
        self.noise_std = float(noise_std)
        self.max_episode_steps = max_episode_steps
        self._fixed_context = None if context is None else self._check_context(context, "context")
        self._tax = validate_tax(DEFAULT_TAX if tax is None else tax, self.max_tax)
        self.observation_space = spaces.Box(
            low=np.array([ASSET_LOW, 0.0], dtype=np.float32),
            high=np.array([ASSET_HIGH, len(CONTEXTS) - 1], dtype=np.float32),
            dtype=np.float32,
        )
        self.action_space = spaces.Discrete(N_ACTIONS)
        self._assets = 0.0
        self._context = 0 if self._fixed_context is None else self._fixed_context
        self._t = 0

    # -- leader interface ------------------------------------------------------------------------------------------

    @property
    def tax(self) -> FloatArray:
        """A copy of the leader's current ``(x, y_1, y_2, y_3)``."""
        return self._tax.copy()

    def set_tax(self, tax: ArrayLike | torch.Tensor) -> None:
        """Replace the leader's ``(x, y_1, y_2, y_3)``; it applies from the next :meth:`step` on.

        Args:
            tax: A numpy array, torch tensor or sequence of 4 rates in ``[0, max_tax]``.

        Raises:
            ValueError: A one-line message naming the bad entry; the current taxes are kept.
        """
        self._tax = validate_tax(tax, self.max_tax)

    set_leader_parameters = set_tax
    """The leader-parameter protocol of :mod:`bilevel_rl.envs.leader_params` (the tax vector)."""

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def assets(self) -> float:
        """Current assets ``s_t``."""
        return self._assets

    @property
    def context(self) -> int:
        """Current household group ``k`` (index into :data:`CONTEXTS`)."""
        return self._context

    @property
    def preferences(self) -> FloatArray:
        """Cobb-Douglas preferences ``α`` of the current household group."""
        return CONTEXTS[self._context].copy()

    def _obs(self) -> np.ndarray:
        return np.array([self._assets, self._context], dtype=np.float32)

    @staticmethod
    def _check_context(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < len(CONTEXTS):
            raise ValueError(f"{key}: expected an integer in [0, {len(CONTEXTS)}), got {value!r}")
        return int(value)

    # -- gymnasium API ---------------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw the household group and ``s_0 ~ N(0, √2)`` from ``self.np_random`` (App. F.3.1).

        Args:
            seed: Seeds ``self.np_random`` (gymnasium convention).
            options: Optional ``{"context": k, "assets": s}`` overriding the draws.

        Returns:
            ``(obs, {"context": k, "preferences": α})``.

        Raises:
            ValueError: On an unknown option key or an out-of-range value, naming the key.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - {"context", "assets"})
        if unknown:
            raise ValueError(f"options.{unknown[0]}: unknown reset option (expected 'context' or 'assets')")
        context = int(self.np_random.integers(len(CONTEXTS)))
        assets = float(np.clip(INITIAL_ASSET_STD * self.np_random.standard_normal(), ASSET_LOW, ASSET_HIGH))
        if self._fixed_context is not None:
            context = self._fixed_context
        if "context" in options:
            context = self._check_context(options["context"], "options.context")
        if "assets" in options:
            value = options["assets"]
            if not isinstance(value, int | float | np.floating | np.integer) or not ASSET_LOW <= value <= ASSET_HIGH:
                raise ValueError(f"options.assets: expected a number in [{ASSET_LOW}, {ASSET_HIGH}], got {value!r}")
            assets = float(value)
        self._context, self._assets, self._t = context, assets, 0
        return self._obs(), {"context": context, "preferences": self.preferences}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Pay the household its utility, record the social welfare, move the assets (§5.2).

        Args:
            action: A flat action in ``[0, 1250)``.

        Returns:
            ``(obs, u_t, False, truncated, info)`` with ``info["leader_reward"] = v_t``.

        Raises:
            ValueError: If the action is not in the action space.
        """
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected an integer in [0, {N_ACTIONS}), got {action!r}")
        indices, hours, consumption = decode_action(int(action))
        income_tax, vat = self._tax[0], self._tax[1:]
        alpha = CONTEXTS[self._context]
        reward = float(household_utility(self._assets, hours, consumption, vat, alpha))
        welfare = float(social_welfare(self._assets, hours, consumption, income_tax, vat))
        revenue = float(tax_revenue(hours, consumption, income_tax, vat))
        mean = next_assets_mean(self._assets, hours, consumption, income_tax)
        self._assets = float(sample_next_assets(self.np_random, mean, self.noise_std))
        self._t += 1
        truncated = self._t >= self.max_episode_steps
        info = {
            "leader_reward": welfare,
            "tax_revenue": revenue,
            "hours": float(hours),
            "consumption": consumption,
            "action_indices": tuple(int(i) for i in indices),
            "context": self._context,
        }
        return self._obs(), reward, False, truncated, info


if "TaxDesign-v0" not in gym.registry:
    gym.register(
        id="TaxDesign-v0",
        entry_point="bilevel_rl.envs.tax_design:TaxDesignEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )
