#!/usr/bin/env bash
# Start shaping runs from a job file, one at a time whenever fewer than MAX_RUNS bilevel-rl processes are running
# (one torch thread each, niced: NICE, default 5); rows already in ARCHIVE (an --archive directory) are skipped.
# Each line of the job file: <env> <row> <overrides...>
#   e.g. "hopper hpgd_s0 upper=hpgd seed=0"; the run directory is $SHAPING_ROOT/<env>/<row>, its log in logs/.
# The preset is exp=${EXP_PREFIX}<env> (EXP_PREFIX defaults to shaping_delayed_; EXP_PREFIX= runs e.g. exp=tax_design).
# RUN_PATTERN (default 'bilevel-rl exp=') is what pgrep counts against MAX_RUNS: two runners with distinct patterns
# (e.g. 'exp=tax_design' and 'exp=shaping_delayed_hopper', MAX_RUNS=1 each) run two job files side by side.
set -u
jobs_file=$1
root=${SHAPING_ROOT:-runs/shaping}
max=${MAX_RUNS:-2}
pattern=${RUN_PATTERN:-bilevel-rl exp=}
mkdir -p "$root/logs"
while read -r env row overrides; do
  [ -z "$env" ] && continue
  case $env in \#*) continue;; esac
  [ -e "$root/$env/$row/run_config.yaml" ] && continue  # started before: resume it by hand if it stopped
  [ -n "${ARCHIVE:-}" ] && [ -e "$ARCHIVE/$env/$row/run_config.yaml" ] && continue  # finished and archived
  while [ "$(pgrep -fc -- "$pattern")" -ge "$max" ]; do sleep 20; done
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup nice -n "${NICE:-5}" bilevel-rl exp=${EXP_PREFIX-shaping_delayed_}$env $overrides progress=false \
    hydra.run.dir="$root/$env/$row" > "$root/logs/${env}_$row.log" 2>&1 &
  sleep 5
done < "$jobs_file"
wait
