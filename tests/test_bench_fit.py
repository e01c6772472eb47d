# SPDX-License-Identifier: GPL-3.0-or-later
"""benchmarks/bench_fit.py end to end on a tiny scene (figures are not asserted: targets are
judged from full runs): renderers side by side, unknown ones skipped, PSNR over time."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_bench_fit_curves_and_skips_unknown_renderers(make_transforms_scene, tmp_path):
    folder, _ = make_transforms_scene(n=5, w=32, h=24)
    out = tmp_path / "fit.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fit.py"), "--renderers", "torch,warp9",
                           "--datasets", str(folder), "--iterations", "4", "--eval-every", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "skipping renderer 'warp9'" in proc.stdout
    assert "steps/s" in proc.stdout and "\nscene | 32x24 | torch |" in proc.stdout
    rows = json.loads(out.read_text())
    assert [r["renderer"] for r in rows] == ["torch"]
    assert [c["step"] for c in rows[0]["curve"]] == [2, 4]
    assert rows[0]["steps_per_s"] > 0 and rows[0]["test_views"] == 1
    assert all(c["psnr"] > 0 and 0 <= c["floater_share_max"] <= 1 for c in rows[0]["curve"])
