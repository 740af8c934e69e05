#!/usr/bin/env bash
# GPU check, run from the repository root on a machine with CUDA, PyTorch and Python 3.12 (the device tool's H200):
# the CUDA path of the quickstart (with a resume) and of an Atari preset with SoBiRL, and the discrete-SAC loop's
# throughput on CUDA and on the same machine's CPU. Packages the machine lacks come as wheels in .whl/.
#   scripts/device_check.sh [quickstart] [atari] [bench_cuda] [bench_cpu]     (default: all four)
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled  # no MUJOCO_GL: training renders nothing (EGL needs extra libraries)
RUNS=${RUNS:-/tmp/device_runs}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
step() { echo "=== $*"; local t0=$SECONDS; timeout 200 "$@"; echo "=== exit $? after $((SECONDS - t0)) s"; }
for part in "${@:-quickstart atari bench_cuda bench_cpu}"; do for p in $part; do case $p in
  quickstart)
    rm -rf "$RUNS/quickstart"
    step python3 -m bilevel_rl.cli exp=quickstart device=cuda trainer.total_steps=6000 progress=false \
      hydra.run.dir="$RUNS/quickstart"
    step python3 -m bilevel_rl.cli checkpoint.resume_from="$RUNS/quickstart" trainer.total_steps=8000 ;;
  atari)
    rm -rf "$RUNS/atari_sobirl"
    step python3 -m bilevel_rl.cli exp=atari_cpu upper=sobirl device=cuda trainer.total_steps=6000 \
      trainer.initial_steps=2000 trainer.steps_per_iter=2000 follower.algo_kwargs.learning_starts=1000 \
      buffer.initial_pairs=40 buffer.pairs_per_iter=20 buffer.warmup_epochs=5 buffer.epochs_per_iter=2 \
      trainer.eval_episodes=1 env.atari.eval_max_steps=500 progress=false hydra.run.dir="$RUNS/atari_sobirl" ;;
  bench_cuda) step python3 scripts/benchmark_atari.py --device cuda --iters 2 --steps-per-iter 2000 ;;
  bench_cpu) step python3 scripts/benchmark_atari.py --device cpu --threads 1 --iters 2 --steps-per-iter 300 ;;
esac; done; done
