# bilevel_rl image. CPU torch by default; for CUDA:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t bilevel-rl:cuda .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
# empty: the default PyPI index (use the CPU index to avoid CUDA wheels: https://download.pytorch.org/whl/cpu)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    MUJOCO_GL=egl \
    WANDB_MODE=offline

RUN apt-get update && apt-get install -y --no-install-recommends \
        libegl1 libgl1 libglib2.0-0 make git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# same install as the Makefile: torch pinned first, then the package with its extras
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml setup.py README.md ./
COPY bilevel_rl ./bilevel_rl
COPY configs ./configs
RUN pip install -e ".[mujoco,atari,wandb,slurm]"
COPY . .

ENTRYPOINT ["bilevel-rl"]
CMD ["exp=quickstart"]
