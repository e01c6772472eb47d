"""The benchmark commands run end to end on a tiny configuration (their figures are not
asserted here: targets are judged from a full run, see the README)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_field_benchmark_prints_every_comparison(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_field.py"), "--gaussians", "3000",
                           "--width", "48", "--height", "32", "--steps", "2", "--fine-masks", "6", "--coarse-masks", "2",
                           "--segment-gaussians", "20000", "--segment-repeats", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for needle in ("mask-field step / RGB step", "baseline / MaskField, step time", "baseline / MaskField, peak memory",
                   "segmentation, 20,000 Gaussians, 3 prompts"):
        assert needle in text, text
    figures = json.loads(out.read_text())
    assert set(figures["training"]) == {"rgb", "maskfield", "maskfield-rasterised", "baseline"}
    for result in figures["training"].values():
        assert result["median_s"] > 0 and result["masks"] == 8
    assert figures["segmentation"]["labelled"] > 0 and all(q >= 1 for q in figures["segmentation"]["queries"])
