#!/usr/bin/env bash
# GPU checks on a CUDA machine with no network (under 10 minutes in all): the GPU test subset,
# MinkUNet end to end against spconv (bench net), then the float16 conv
# bench with spconv's CUDA build as the peer. Results land in OUTDIR (logs, JSON).
#
#   bash scripts/gpu_check.sh OUTDIR [BUNDLE] [what...]     what: tests net bench maps (default all)
#
# BUNDLE (default .gpu, git-ignored) may hold what the machine lacks: the wheels spconv-cu126
# needs (cumm-cu126 0.7.x, pccm, ccimport, fire, termcolor, lark), spconv itself unpacked and
# re-packed as spconv.tar.xz (its wheel is 70 MB, the xz 22 MB), and the real scan as
# kitti08_000000.bin. See docs/gpu.md.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [BUNDLE] [tests net bench maps]}
BUNDLE=${2:-.gpu}
shift $(($# >= 2 ? 2 : 1))
WHAT=${*:-tests net bench maps}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" |
    tee -a "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1 ||
    { cat "$OUT/install.log"; exit 1; }

if compgen -G "$BUNDLE/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$BUNDLE"/*.whl
    export PYTHONPATH=/tmp/site
fi
if [ -f "$BUNDLE/spconv.tar.xz" ]; then
    mkdir -p /tmp/site && tar xJf "$BUNDLE/spconv.tar.xz" -C /tmp/site
    export PYTHONPATH=/tmp/site
fi
python3 -c "import spconv.pytorch, spconv; print('spconv', spconv.__version__)" 2>&1 | tail -1 |
    tee -a "$OUT/env.txt"

DATA=../shared/data
SCAN=$DATA/semantickitti/sequences/08/velodyne/000000.bin
if [ ! -f "$SCAN" ] && [ -f "$BUNDLE/kitti08_000000.bin" ]; then
    mkdir -p "$(dirname "$SCAN")" && cp "$BUNDLE/kitti08_000000.bin" "$SCAN"
fi

for step in $WHAT; do
    case $step in
    tests)
        timeout 240 python3 -m pytest -q -p no:cacheprovider --durations=8 \
            tests/gpu tests/functional tests/maps tests/nn tests/models tests/prune/test_accelerate.py \
            2>&1 | tee "$OUT/tests.log" | tail -25
        ;;
    net)
        # the end-to-end figure: MinkUNet width 1.0 per scan, fp32/fp16/bf16, against spconv
        timeout 180 sparseconv bench net --device cuda --networks minkunet-w1.0 --sizes \
            --rounds 5 --data "$DATA" --json "$OUT/net_cuda.json" --png "$OUT/net_cuda.png" 2>&1 |
            tr '\r' '\n' | grep -v "bench net:" | tee "$OUT/bench_net.log" | tail -20
        ;;
    bench)
        timeout 100 sparseconv bench conv --device cuda --dtype float16 --rounds 3 --channels 64 256 --data "$DATA" \
            --json "$OUT/conv_cuda_fp16.json" 2>&1 | tr '\r' '\n' | grep -v "bench conv:" |
            tee "$OUT/bench_conv.log" | tail -40
        ;;
    maps)
        timeout 60 sparseconv bench maps --device cuda --sizes 100000 --data "$DATA" \
            --json "$OUT/maps_cuda.json" 2>&1 | tr '\r' '\n' | grep -v "bench maps:" |
            tee "$OUT/bench_maps.log" | tail -20
        ;;
    esac
done
