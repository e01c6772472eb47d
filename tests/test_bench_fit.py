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



def test_bench_fit_set_parses_overrides_and_refuses_unknown_names():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_fit
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from maskfield.splats.fit import FitSettings

    got = bench_fit.overrides(["grow_grad2d=3e-4", "refine_stop_fraction=.5", "background_mode=learn"])
    assert got == {"grow_grad2d": 3e-4, "refine_stop_fraction": 0.5, "background_mode": "learn"}
    settings = FitSettings.for_device("cpu", **got)
    assert (settings.grow_grad2d, settings.refine_stop_fraction, settings.background_mode) == (3e-4, 0.5, "learn")
    for bad in ("grow_gradient=1", "grow_grad2d"):
        try:
            bench_fit.overrides([bad])
        except SystemExit as exc:
            assert "grow_grad2d" in str(exc) and bad.split("=")[0] in str(exc)  # says which names there are
        else:
            raise AssertionError(f"--set {bad} was taken")
