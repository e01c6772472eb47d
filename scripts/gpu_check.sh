#!/usr/bin/env bash
# The one-command GPU check: on a CUDA machine, installs what it needs, compares gsplat's
# rasteriser with ours (values, gradients), exercises the fallback when gsplat's kernels cannot
# build, times a fit, the priors and the mask field, runs the demo, and prints one table
# (also written to out/gpu_check/table.md).
#
#   bash scripts/gpu_check.sh [--quick] [--skip-demo]
#
# By default it prepares the project's .venv with scripts/ensure_env.sh (pip installs the
# pinned torch, a CUDA build on Linux). On a machine without a package index, point it at a
# Python that already has torch with CUDA: MASKFIELD_PYTHON=python3; packages that Python lacks
# are then installed from wheel files in MASKFIELD_WHEELS (a folder), without an index.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
if [ -n "${MASKFIELD_PYTHON:-}" ]; then
  python="$MASKFIELD_PYTHON"
  if [ -n "${MASKFIELD_WHEELS:-}" ]; then
    "$python" -m pip install -q --no-index --no-deps --find-links "$MASKFIELD_WHEELS" "$MASKFIELD_WHEELS"/*.whl >&2
  fi
  export PYTHONPATH="$here/backend${PYTHONPATH:+:$PYTHONPATH}"
else
  bash scripts/ensure_env.sh
  python="$here/.venv/bin/python"
fi
exec "$python" benchmarks/gpu_check.py "$@"
