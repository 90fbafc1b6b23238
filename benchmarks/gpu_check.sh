#!/usr/bin/env bash
# Every GPU figure of the benchmarks and every CUDA test, in one command, in under 10 minutes on
# one GPU (see benchmarks/README.md, "GPU check"). Run from the repository root:
#
#     bash benchmarks/gpu_check.sh              # results in $OUT, else outputs/gpu_check/
#
# Each part has its own time limit, so one that hangs cannot eat the others' time; a part's exit
# status is printed after it and the script's status is that of the first part that failed.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-outputs/gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: CUDA is not available here; nothing to measure" >&2
    exit 2
}
{ nvidia-smi; python -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } \
    > "$out/device.txt" 2>&1
status=0
part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
}
# the CUDA tests: those marked gpu, and the one device test that is not marked
part tests 120 python -m pytest -q -rs -m gpu tests
part tests_unmarked 60 python -m pytest -q -rs tests/test_sampling_core.py -k "cuda"
part likelihood 120 python benchmarks/likelihood.py --device cuda --repeats 3
part throughput 90 python benchmarks/throughput.py --device cuda
part train 180 python benchmarks/train_throughput.py --device cuda --full --bf16 --compile
exit $status
