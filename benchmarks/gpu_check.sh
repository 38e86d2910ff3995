#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the device tool's `run`), about 8 minutes on an
# H200: the CUDA tests (test_cuda, test_response and the CUDA cases of test_networks,
# test_streaming and test_kfac), the MLP influence benchmark and the scale benchmark (part c:
# EK-FAC on the 1M-parameter MLP) on the GPU. Results go to $OUT.
#
# The GPU image has torch and scikit-learn but not skorch. Before the call, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl skorch==1.4.0
# then call run with carry=[".whl"], timeout_s=540 and command `bash benchmarks/gpu_check.sh`.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, sklearn, skorch; print(torch.__version__, sklearn.__version__, skorch.__version__)" \
    | tee -a "$OUT/gpu.txt"
# the default addopts start xdist workers and collect doctests: not wanted here
timeout 180 python3 -m pytest -o addopts="" -p no:cacheprovider -q -ra tests/test_cuda.py \
    tests/test_response.py tests/test_networks.py tests/test_streaming.py tests/test_kfac.py \
    -k "cuda" 2>&1 | tee "$OUT/cuda_tests.log"
timeout 120 python3 benchmarks/bench_mlp.py --device cuda --sizes 1500 --repeats 1 \
    --output "$OUT/bench_mlp_cuda.md"
# rows are written as they finish: a timeout keeps the finished ones
timeout 180 python3 benchmarks/bench_scale.py --device cuda --parts c \
    --sizes 10000,20000,50000 --output "$OUT/bench_scale_cuda.md"
