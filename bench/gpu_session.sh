#!/usr/bin/env bash
# Everything a session lent a GPU runs, prepared as one command (device time is 15 minutes a session, start included).
#
#   bash bench/gpu_session.sh fetch    # here, where pip reaches PyPI: the wheels the GPU image lacks, into .whl/
#   bash bench/gpu_session.sh run      # there: the device tool's run, carry [".whl"], timeout_s 480
#
# The GPU image has torch, lightning, torchmetrics, pandas, pyarrow, scipy and rich (../.library/device/KINDS.md),
# not hydra-core, omegaconf or antlr4 (pure-Python wheels, .whl/ is git-ignored). `run` installs them into /tmp/site,
# names the card, then prints bench/gpu.py's table (about 3 minutes at ML-25M's size) and bench/optimizers.py on the
# card, each also written under $OUT; the exit code is 1 when either bench failed. Arguments after `run` go to
# bench/gpu.py; OPTIMIZER_BENCH_DEVICE=cpu runs the optimizer bench on the CPU, for a smoke test here:
#   PYTHON=.venv/bin/python OPTIMIZER_BENCH_DEVICE=cpu bash bench/gpu_session.sh run --device cpu --ratings 60000 \
#       --users 600 --items 300 --eval-users 600 --steps 16 --batch-sizes 1024 4096 --pipeline-seconds 0.5
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PYTHON="${PYTHON:-python3}"
mode="${1:-}"
shift || true
case "$mode" in
  fetch)
    rm -rf .whl && mkdir -p .whl || exit 1
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.2 omegaconf==2.3.0 || exit 1
    # omegaconf's parser runtime is published as a source archive only; pure Python, so built into a wheel here.
    "$PYTHON" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 || exit 1
    ls .whl
    ;;
  run)
    if compgen -G ".whl/*.whl" > /dev/null; then
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    fi
    export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    if ! "$PYTHON" -c "import hydra, omegaconf" 2> /dev/null; then
      echo "hydra-core / omegaconf are missing: run 'bash bench/gpu_session.sh fetch' here and carry .whl" >&2
      exit 2
    fi
    out="${OUT:-/tmp/gpu-session}"
    mkdir -p "$out"
    { command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
      "$PYTHON" -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__)"
    } 2>&1 | tee "$out/card.txt"
    timeout 330 "$PYTHON" bench/gpu.py "$@" 2>&1 | tee "$out/gpu.txt"
    gpu_rc=${PIPESTATUS[0]}
    timeout 90 "$PYTHON" bench/optimizers.py --device "${OPTIMIZER_BENCH_DEVICE:-cuda}" 2>&1 | tee "$out/optimizers.txt"
    optimizers_rc=${PIPESTATUS[0]}
    echo "exit codes: bench/gpu.py $gpu_rc, bench/optimizers.py $optimizers_rc (124: timed out)"
    exit $(( gpu_rc != 0 || optimizers_rc != 0 ))
    ;;
  *)
    echo "usage: bash bench/gpu_session.sh fetch|run [bench/gpu.py arguments]" >&2
    exit 2
    ;;
esac
