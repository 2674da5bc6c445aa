#!/usr/bin/env bash
# Build mmcv (full, with ops) from the PyPI sdist into a wheel cache outside the repo, once.
#
# PyPI ships mmcv 2.1.0 only as an sdist. Its setup.py hard-codes -std=c++17, which the
# torch >= 2.10 headers reject ("C++20 or later compatible compiler is required"), so the
# flag is changed to -std=c++20 before building. The wheel is keyed by mmcv + torch version.
#
# Usage: build_mmcv_wheel.sh PYTHON   (prints the path of the cached wheel)
set -euo pipefail
PY=$(command -v "${1:?usage: build_mmcv_wheel.sh PYTHON}")
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
CACHE=${MMDCCNEXT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmdccnext/wheels}/mmcv-${MMCV_VERSION}-torch${TORCH_VERSION}
mkdir -p "$CACHE"
wheel=$(ls "$CACHE"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ]; then echo "$wheel"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building mmcv $MMCV_VERSION for torch $TORCH_VERSION (about 11 min on 2 cores) ..." >&2
"$PY" -m pip download --no-deps --no-binary :all: -d "$work" "mmcv==$MMCV_VERSION" >&2
tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
src="$work/mmcv-$MMCV_VERSION"
grep -q -- "-std=c++17" "$src/setup.py" || { echo "setup.py has no -std=c++17 flag to patch" >&2; exit 1; }
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
# Build into the temporary folder, then move: a killed build never leaves a wheel in the cache.
(cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" . >&2)
built=$(ls "$work"/dist/mmcv-*.whl)
mv "$built" "$CACHE/.partial.whl"
mv "$CACHE/.partial.whl" "$CACHE/$(basename "$built")"
echo "$CACHE/$(basename "$built")"
