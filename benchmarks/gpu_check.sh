#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the device tool's `run`), sized to about 8 minutes
# of an H100/H200 so that a 15-minute device budget leaves room for one rerun:
#   1. the CUDA tests (every test skipped without a GPU; their ids all contain "cuda");
#   2. benchmarks/bench_gpu.py: the MLP task and a LeNet-like CNN with ekfac, kfac and cg on
#      the GPU against the CPU (time, peak GPU memory, Pearson and top-10 overlap with exact,
#      the device-vs-CPU gap of every matrix);
#   3. benchmarks/bench_scale.py part c: the 1M-parameter MLP at N = 50k with ekfac and with
#      exact CG (EK-FAC preconditioner, capped iterations);
#   4. one PBRF run: benchmarks/paper_table2.py --quick --device cuda.
# Results go to $OUT (the device tool fetches them); copy them to benchmarks/results/.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine (device cuda)
#   bash benchmarks/gpu_check.sh --device cpu    # dry run here: every step at tiny sizes
#
# The dry run is part of the test suite (tests/test_gpu_check.py), so the script stays
# current with the package. The GPU image may lack skorch; before the device call, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl skorch==1.4.0
# then call run with carry=[".whl"], timeout_s=540 and command `bash benchmarks/gpu_check.sh`.
set -uo pipefail
DEVICE=cuda
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        *) echo "gpu_check.sh: unknown argument $1 (use --device cuda|cpu)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
HERE="$(cd "$(dirname "$0")/.." && pwd)"
cd "$HERE" || exit 1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
FAILED=0
step() {  # step NAME TIMEOUT COMMAND...: run, log to $OUT/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T))"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    tail -n 25 "$OUT/$name.log"
    if [ $status -ne 0 ]; then
        echo "== $name FAILED (exit $status)"
        FAILED=1
    fi
}

if [ "$DEVICE" = "cpu" ]; then  # dry run: the same steps at tiny sizes
    QUICK=(--quick)
    SCALE=(--sizes 300 --exact-sizes 300 --exact-maxiter 2 --threads 1)
    export BENCH_SCALE_WIDTHS=32,16,16  # part c's MLP shrunk from 1M to ~1k parameters
    PAPER=(--families mlp --no-trends --n-train 40 --n-test 6 --n-points 2 --epochs 2
           --n-iter 20)
    TESTS_LIMIT=240
else
    QUICK=()
    SCALE=(--sizes 50000 --exact-sizes 50000 --exact-maxiter 30)
    PAPER=(--no-trends)
    TESTS_LIMIT=200
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2> /dev/null \
        || echo "no nvidia-smi (device $DEVICE)"
    python3 -c "import torch, sklearn, skorch; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'sklearn', sklearn.__version__, 'skorch', skorch.__version__)"
} | tee "$OUT/gpu.txt"

# the default addopts start xdist workers and collect doctests: not wanted here
# every test file with a GPU-only test (skipped without one), every test there whose id
# says cuda (tests/test_gpu_check.py checks that each GPU-only test's id does)
mapfile -t CUDA_FILES < <(grep -lE "skipif\(not .*cuda\.is_available\(\)" tests/test_*.py)
step cuda_tests "$TESTS_LIMIT" python3 -m pytest -o addopts="" -p no:cacheprovider -q -ra \
    "${CUDA_FILES[@]}" -k cuda
step bench_gpu 200 python3 benchmarks/bench_gpu.py --device "$DEVICE" "${QUICK[@]}" \
    --output "$OUT/bench_gpu.md"
# rows are written as they finish: a timeout keeps the finished ones
step bench_scale 240 python3 benchmarks/bench_scale.py --device "$DEVICE" --parts c \
    "${SCALE[@]}" --output "$OUT/bench_scale.md"
step paper_table2 180 python3 benchmarks/paper_table2.py --quick --device "$DEVICE" \
    "${PAPER[@]}" --output "$OUT/paper_table2.md"
echo "== done ($(date +%T)); results in $OUT"
exit $FAILED
