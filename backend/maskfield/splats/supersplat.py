"""SuperSplat's compressed formats through its own converter, @playcanvas/splat-transform (Node.js).

The standard .ply stays the reference: the compressed .ply is for the web. What the
converter drops (checked by tests/test_select.py on its output read back as CSV) is in
SUPERSPLAT_DROPS.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..events import MaskFieldError

SUPERSPLAT_DROPS = (
    "extra per-Gaussian properties (segment_score, label, label_score) are not kept; "
    "positions, scales and rotations are quantised per chunk of 256 Gaussians, colour and opacity to 8 bits, "
    "and the order of the Gaussians may change (sorted for the web)"
)


def find_splat_transform() -> Path | None:
    """The converter: $MASKFIELD_SPLAT_TRANSFORM, the environment's node/ folder, or PATH."""
    candidates = [os.environ.get("MASKFIELD_SPLAT_TRANSFORM"),
                  str(Path(sys.prefix) / "node" / "node_modules" / ".bin" / "splat-transform"),
                  shutil.which("splat-transform")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK) and shutil.which("node"):
            return Path(c)
    return None


def compress(tool: Path, src: Path, target: Path, timeout: float = 600) -> Path:
    """src (.ply) -> target (.compressed.ply), written under a temporary name, then renamed."""
    tmp = target.with_name(target.name.replace(".compressed.ply", ".tmp.compressed.ply"))
    proc = subprocess.run([str(tool), "-w", str(src), str(tmp)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise MaskFieldError(f"SuperSplat's converter failed on {src.name}: {(proc.stderr or proc.stdout)[-500:]}")
    os.replace(tmp, target)
    return target
