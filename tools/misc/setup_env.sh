#!/usr/bin/env bash
# Create .venv with the tested pins and install mmdccnext in editable mode. Idempotent: on a
# set-up machine it checks each step and returns within seconds.
#
# Environment: PYTHON (default python3.11 or python3), VENV (default .venv),
#              MMDCCNEXT_WHEEL_CACHE (mmcv wheel cache, default ~/.cache/mmdccnext/wheels).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
PIP_QUIET=${PIP_QUIET:--q}
stamp="$VENV/.mmdccnext-env"
# The stamp records what was installed; a changed requirement file re-runs the installs.
want=$(cat requirements/*.txt setup.py | sha256sum | cut -c1-16)

step() { printf '[env] %s\n' "$*"; }
pip() { "$VENV/bin/python" -m pip "$PIP_QUIET" --disable-pip-version-check "$@"; }

# What the builds below need from the machine (mmcv from source and mmdccnext's C++ extension):
# say so up front rather than deep inside a compiler log.
need_build=0
[ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && need_build=1
if [ "$need_build" = 1 ]; then
    command -v "${CXX:-c++}" >/dev/null || { echo "[env] no C++ compiler (${CXX:-c++}) found:" \
        "install one (Debian/Ubuntu: apt-get install build-essential)" >&2; exit 1; }
    "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || {
        echo "[env] $PYTHON has no C headers (Python.h): install them (Debian/Ubuntu:" \
            "apt-get install python3-dev), or choose another interpreter with PYTHON=..." >&2; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

if [ "$need_build" = 1 ]; then
    step "installing torch and torchvision"
    pip install "pip>=24"
    pip install -r requirements/torch.txt
    step "installing build tools (setuptools < 81 after torch)"
    pip install -r requirements/build.txt
    if "$VENV/bin/python" -c 'import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != "2.1.0")' 2>/dev/null; then
        step "mmcv 2.1.0 with ops already importable"
    else
        step "mmcv 2.1.0 with ops: cached wheel or build from source"
        wheel=$(tools/misc/build_mmcv_wheel.sh "$VENV/bin/python")
        pip install --no-deps "$wheel"
    fi
    step "installing the OpenMMLab stack, runtime and test requirements"
    # mmcv is already installed: the pin only has to be satisfied, never rebuilt.
    pip install -r requirements/openmmlab.txt -r requirements/runtime.txt -r requirements/tests.txt
    # torch may have pulled setuptools forward again through a dependency.
    pip install -r requirements/build.txt
    step "installing mmdccnext (editable, builds the C++ extension)"
    MAX_JOBS=${MAX_JOBS:-2} pip install --no-build-isolation --no-deps -e .
    echo "$want" > "$stamp"
else
    # Sources of the C++ extension may have changed since the last build.
    sources=$(find mmdccnext/ops/csrc -name '*.cpp' 2>/dev/null)
    if [ -n "$sources" ] && { [ -n "$(find mmdccnext/ops/csrc -newer "$stamp" \( -name '*.cpp' -o -name '*.h' \))" ] || \
       ! ls mmdccnext/_ext*.so >/dev/null 2>&1; }; then
        step "rebuilding the C++ extension"
        MAX_JOBS=${MAX_JOBS:-2} pip install --no-build-isolation --no-deps -e .
        touch "$stamp"
    fi
fi
"$VENV/bin/python" -c 'import mmdccnext, mmdet, mmseg, mmpretrain, mmcv; print("[env] ready: mmdccnext", mmdccnext.__version__, "mmcv", mmcv.__version__)'
