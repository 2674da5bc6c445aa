#!/usr/bin/env bash
# Build mmcv (full, with ops) from the PyPI sdist into a wheel cache outside the repo, once.
#
# PyPI ships mmcv 2.1.0 only as an sdist. Its setup.py hard-codes -std=c++17, which the
# torch >= 2.10 headers reject ("C++20 or later compatible compiler is required"), so the
# flag is changed to -std=c++20 before building. The wheel is keyed by mmcv + torch version.
#
# Every pip step runs with --no-build-isolation: mmcv's setup.py imports pkg_resources, and an
# isolated build environment (which `pip download` also uses, to prepare an sdist's metadata)
# gets the newest setuptools, which has none (>= 81). The venv's pinned setuptools
# (requirements/build.txt) must be installed first.
#
# Usage: build_mmcv_wheel.sh PYTHON           prints the path of the cached wheel
#        build_mmcv_wheel.sh --check PYTHON   the cold path without the compile: download the
#            sdist, patch it, prepare its metadata in a temporary folder; ignores the cache.
#            (PYTHON: the venv as setup_env.sh prepares it, i.e. with requirements/build.txt.)
#            Exits non-zero with the failing step named (CI runs it every time).
set -euo pipefail
check=0
if [ "${1:-}" = --check ]; then check=1; shift; fi
PY=$(command -v "${1:?usage: build_mmcv_wheel.sh [--check] PYTHON}")
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
# The wheel holds compiled code for one interpreter and platform: key the cache by them too, so
# a cache filled by another Python (or machine type) is never offered to this one.
PY_TAG=$("$PY" -c 'import sys, sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{sysconfig.get_platform()}")')
CACHE=${MMDCCNEXT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmdccnext/wheels}/mmcv-${MMCV_VERSION}-torch${TORCH_VERSION}-${PY_TAG}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/log"

# run STEP CMD...: run CMD with its output in the log; on failure name STEP and show the log.
run() {
    local what=$1; shift
    if ! "$@" >>"$log" 2>&1; then
        echo "build_mmcv_wheel.sh: FAILED at: $what" >&2
        echo "--- last 40 lines of the log ---" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

if [ "$check" = 0 ]; then
    mkdir -p "$CACHE"
    wheel=$(ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [ -n "$wheel" ]; then echo "$wheel"; exit 0; fi
    echo "building mmcv $MMCV_VERSION for torch $TORCH_VERSION (about 16 min on 2 cores) ..." >&2
fi

run "pip download of the mmcv $MMCV_VERSION sdist (prepares its metadata)" \
    "$PY" -m pip download --no-build-isolation --no-deps --no-binary :all: -d "$work" "mmcv==$MMCV_VERSION"
run "unpacking the sdist" tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
src="$work/mmcv-$MMCV_VERSION"
grep -q -- "-std=c++17" "$src/setup.py" || { echo "build_mmcv_wheel.sh: FAILED at: patching" \
    "(mmcv's setup.py has no -std=c++17 flag to change)" >&2; exit 1; }
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"

if [ "$check" = 1 ]; then
    run "preparing the patched sdist's metadata (setup.py egg_info)" \
        bash -c "cd '$src' && MMCV_WITH_OPS=1 FORCE_CUDA=0 '$PY' setup.py -q egg_info --egg-base '$work'"
    echo "[check] mmcv $MMCV_VERSION cold path OK: sdist downloaded, patched to -std=c++20," \
        "metadata prepared with $("$PY" -c 'import setuptools; print("setuptools", setuptools.__version__)')"
    exit 0
fi

# Build into the temporary folder, then move: a killed build never leaves a wheel in the cache.
# MMDCCNEXT_BUILD_LOG=FILE keeps the compiler's full output (it is long) in FILE.
log=${MMDCCNEXT_BUILD_LOG:-$log}
: > "$log"
run "compiling mmcv (full log: rerun with MMDCCNEXT_BUILD_LOG=/tmp/mmcv-build.log)" \
    bash -c "cd '$src' && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
        '$PY' -m pip wheel --no-build-isolation --no-deps -w '$work/dist' ."
built=$(ls "$work"/dist/mmcv-*.whl)
mv "$built" "$CACHE/.partial.whl"
mv "$CACHE/.partial.whl" "$CACHE/$(basename "$built")"
echo "$CACHE/$(basename "$built")"
