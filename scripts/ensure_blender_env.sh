#!/usr/bin/env bash
# Creates (or reuses) the environment in which the add-on tests run one Blender version:
# .venv-blender/<version>/ with the bpy module pinned in requirements/blender-<version>.txt
# (bpy, numpy: all that the add-on and its test drivers use). Blender 5.0 runs in .venv.
#   bash scripts/ensure_blender_env.sh 4.2        # prints the environment's python
# A stamp of the requirement file skips the work on a second run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:?usage: ensure_blender_env.sh VERSION (4.2, 4.5, ...)}"
req="$here/requirements/blender-$version.txt"
if [ ! -f "$req" ]; then
  echo "[setup] no requirements/blender-$version.txt: Blender $version is not in the test matrix" >&2
  exit 2
fi
venv="$here/.venv-blender/$version"
stamp="$venv/.maskfield-stamp"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "$venv/bin/python"
  exit 0
fi
# bpy wheels exist for one Python minor version per Blender release: 3.11 for 4.2 - 5.0
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "[setup] Blender $version's bpy module needs Python 3.11; $python is $("$python" -V 2>&1). Set PYTHON=..." >&2
  exit 2
fi
echo "[setup] preparing $venv for Blender $version (bpy, ~350 MB; reused afterwards)" >&2
rm -f "$stamp"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q -r "$req" >&2
echo "$want" > "$stamp"
echo "$venv/bin/python"
