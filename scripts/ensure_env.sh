#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs the pinned stack.
# torch and torchvision go in first: anything that asks for plain `torch` would otherwise
# pull a multi-GB build. A stamp of the requirement files skips the work on a second run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MASKFIELD_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.maskfield-stamp"
want="$(cat "$here/requirements/torch.txt" "$here/requirements/stack.txt" "$here/requirements/node.txt" "$here/backend/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
echo "[setup] preparing the environment in $venv (first run takes a few minutes)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip >&2
$pip install -q -r "$here/requirements/torch.txt" >&2
$pip install -q -r "$here/requirements/stack.txt" >&2
$pip install -q --no-deps -e "$here/backend" >&2
# SuperSplat's converter, the outside reader our .ply files are tested against (needs Node)
if command -v npm >/dev/null; then
  npm install -s --no-audit --no-fund --prefix "$venv/node" $(grep -v '^#' "$here/requirements/node.txt") >&2
else
  echo "[setup] npm not found: the SuperSplat read-back test will fail; install Node.js 18+" >&2
fi
echo "$want" > "$stamp"
echo "[setup] environment ready" >&2
