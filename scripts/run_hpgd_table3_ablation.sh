#!/usr/bin/env bash
# HPGD Table 3 ablation (issue [4/4]): the authors' conventions (their fail_prob 0.33 and, for HPGD, their
# estimator) and, one change at a time, the paper's model slip, the Σ_{s,a} cost, the penalised goal, the
# context-averaged metric, a simulator with the model's slip (HPGD only), a fail probability of 1/3 instead of 0.33,
# HPGD's per-episode direct term, and all of the paper's conventions together; every variant at one reduced budget
# (ITERATIONS, WINDOW, SEEDS), all methods with the full learning-rate (and C) grid. One process, one thread; then:
#   python scripts/reproduce_hpgd_table3_batched.py --ablation $ROOT/*/*.json --md docs/results/hpgd_four_rooms_table3_ablation.md
set -eu
root=${ROOT:-runs/table3_ablation}
budget=(--iterations "${ITERATIONS:-1000}" --window "${WINDOW:-100}" --seeds "${SEEDS:-3}" --progress-every 0)
grid=(--lrs 1.0 0.5 0.1 0.05 0.01 --Cs 0.1 0.5 1.0 2.0 5.0)  # App. F's printed grids, as the ablation was run
py=${PYTHON:-python}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python  # the project's venv (make install)
run() {  # <variant dir> <methods> <overrides...>
  local dir=$1 methods=$2
  shift 2
  mkdir -p "$root/$dir"
  for m in $methods; do
    [ -e "$root/$dir/$m.json" ] && continue
    local estimator=()
    [ "$m" = hpgd ] && estimator=(--hpgd-partial-episodes --hpgd-direct "${HPGD_DIRECT:-start-state}")
    OMP_NUM_THREADS=1 "$py" scripts/reproduce_hpgd_table3_batched.py --method "$m" --out "$root/$dir/$m.json" \
      "${budget[@]}" "${grid[@]}" "${estimator[@]}" "$@"
  done
}
all="amd hpgd zero_order"
run authors "$all"
run model_slip "$all" --model-slip 0.3333333333333333
run cost_state_action "$all" --cost state-action
run goal_penalised "$all" --goal penalised
run metric_average "hpgd zero_order" --metric average
run sim_slip_model "hpgd" --sim-slip 0.44
run fail_one_third "$all" --model-slip 0.4444444444444444 --sim-slip 0.3333333333333333
HPGD_DIRECT=episodes run direct_episodes "hpgd"
run paper "$all" --convention paper
