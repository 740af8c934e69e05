"""Paper reproductions on finite problems (each has a script under ``scripts/`` and a result under ``docs/results/``).

* SoBiRL: :mod:`.msobirl` (M-SoBiRL, Algorithm 2, and the J.3 problem) and :mod:`.stoc_sobirl` (Algorithms 3–4).
* HPGD Four-Rooms (§5.1, Table 3): :mod:`.four_rooms` (environment), :mod:`.hpgd` (Algorithm 1 and the shared outer
  loop), :mod:`.amd` (Algorithm 9) and :mod:`.zero_order` (Algorithm 10).
* PBRL §6.1: :mod:`.stackelberg` (the entropy-regularised Stackelberg Markov game) and :mod:`.pbrl` (Algorithm 1);
  PBRL §6.3 incentive design with a zero-sum lower level: :mod:`.incentive` (NI penalty, PBRL-NI, Meta-Gradient).
* PPA-BRL §5 goal-placement navigation: :mod:`.ppa_navigation`.
* The Hessian-free penalty method's reward-update sign: :mod:`.hessian_free`.

Submodules are imported on demand (``from bilevel_rl.tabular.repro.pbrl import run_pbrl``).
"""
