#!/usr/bin/env bash
# Put into .whl/ (git-ignored) the wheels that tools/analysis/gpu_check.py needs on a GPU machine
# that has Python 3.12, torch + CUDA, triton, timm, numpy, opencv-python-headless, matplotlib,
# rich and pyyaml, but no OpenMMLab package and no package registry.
#
# What `import mmdccnext.ops` and the backbone pull in beyond that: mmengine (registries,
# BaseModule) and mmcv (the version check, mmcv.cnn.bricks.DropPath), and their pure-Python
# dependencies. mmcv's compiled ops are not needed (the backbone and the check do not use
# them), so mmcv comes as mmcv-lite 2.1.0, which OpenMMLab publishes on PyPI as a pure-Python
# wheel: the same 2.1.0 sources built with MMCV_WITH_OPS=0 (tools/misc/build_mmcv_wheel.sh
# builds the full one with ops from the sdist, which the check does not need). It installs the
# `mmcv` package, version 2.1.0.
#
# Every wheel is pure Python (py3-none-any), so the same .whl/ installs on any Python >= 3.8
# and any platform; the script downloads for Python 3.12 and refuses anything else.
#
# Usage (on a machine with a package registry, from the repository root):
#     bash tools/analysis/gpu_bundle.sh [PYTHON]     # PYTHON: whose pip downloads (default python3)
# then copy the repository with .whl/ to the GPU machine and run there:
#     pip install --no-index --no-deps --target /tmp/site .whl/*.whl && \
#         PYTHONPATH=/tmp/site:. python3 tools/analysis/gpu_check.py
set -euo pipefail
PY=${1:-python3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/.whl"
LIMIT_MIB=64

# Pinned to what the repository is tested with (requirements/openmmlab.txt, tests.txt); the
# others are the dependencies of mmengine 0.10.7 and yapf 0.40.1 that the GPU machine lacks.
WHEELS=(
    mmengine==0.10.7
    mmcv-lite==2.1.0
    addict==2.4.0
    yapf==0.40.1
    termcolor==3.3.0
    platformdirs==4.14.9
    importlib-metadata==10.2.0
    zipp==4.1.2
    lazy-importer==0.1.0
    tomli==2.5.0
)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-deps: the list above is the closure (what the GPU machine already has is left out on
# purpose); --implementation py --abi none --platform any: pure-Python wheels only, never a
# compiled one that would tie the bundle to one interpreter.
if ! "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation py --abi none --platform any -d "$tmp" "${WHEELS[@]}" >"$tmp/log" 2>&1; then
    echo "gpu_bundle.sh: FAILED: pip download (needs a package registry). Last lines:" >&2
    tail -n 20 "$tmp/log" >&2
    exit 1
fi
for w in "$tmp"/*.whl; do
    case "$w" in
        *-none-any.whl) ;;
        *) echo "gpu_bundle.sh: FAILED: $(basename "$w") is not a pure-Python wheel" >&2; exit 1 ;;
    esac
done
count=$(ls "$tmp"/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "gpu_bundle.sh: FAILED: expected ${#WHEELS[@]} wheels, got $count" >&2
    exit 1
fi
bytes=$(cat "$tmp"/*.whl | wc -c)
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "gpu_bundle.sh: FAILED: the wheels take $bytes bytes, over $LIMIT_MIB MiB" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
mv "$tmp"/*.whl "$OUT"/
ls -l "$OUT" | tail -n +2
echo "$count wheels, $(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB in $OUT"
echo "On the GPU machine, from the repository root:"
echo "  pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. python3 tools/analysis/gpu_check.py"
