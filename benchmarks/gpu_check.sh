#!/usr/bin/env bash
# GPU tier check, one call on a lent CUDA machine (the `device` tool; about 5-8 min with its start):
# every training method's step on the GPU-tier plans (nnU-Net 3d_fullres 32-320 on ChaosT2, V-Net 16 at
# 80x112x112 on LeftAtrium), fp16 AMP and fp32, through the same Method.enable_amp the engine uses.
# A row is 'ok' only when its losses stay finite and the kept network's weights change, so this is the
# CUDA/AMP path's check as well as its timing. Results: $OUT/step_bench_cuda.{json,md} (copy them to
# benchmarks/results/ and commit).
#
# The machine has torch but not monai (the only import the step benchmark needs beyond the image's
# packages); prepare it here once, then call the device tool:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl monai==1.6.1
#   device run: command "bash benchmarks/gpu_check.sh $(git rev-parse --short HEAD)", carry [".whl"], timeout_s 540
set -euo pipefail
commit="${1:-unknown}"
out="${OUT:-benchmarks/results}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
python3 benchmarks/step_bench.py run --plans chaos_ssl_gpu la_ssl8_gpu --device cuda --amp on off \
    --steps 20 --warmup 5 --threads 8 --out "$out" --commit "$commit"
cat "$out/step_bench_cuda.md"
