"""The one-command GPU check keeps working where there is no GPU: it refuses without --allow-cpu,
and its CPU part (renderers compared and timed) runs and writes its table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_refuses_without_cuda_unless_asked(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():  # on a GPU machine the check runs for real instead
        pytest.skip("CUDA present")
    proc = run("--out", tmp_path)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--allow-cpu" in proc.stderr
    assert not (tmp_path / "table.md").exists()


def test_cpu_part_writes_one_table(tmp_path):
    proc = run("--allow-cpu", "--quick", "--only", "renderers", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    checks = {row.split(" | ")[0].lstrip("| ") for row in rows}
    assert "device" in checks
    assert any(c.startswith("render fwd+bwd, 100k Gaussians 240x135, torch on cpu") for c in checks)
    assert not any("FAIL" in row for row in rows), table
    # every timed renderer printed a figure in milliseconds
    timed = [row for row in rows if row.startswith("| render fwd+bwd")]
    assert timed and all(" ms median" in row for row in timed)


def test_scenes_folder_without_the_rendered_scenes_is_refused(tmp_path):
    (tmp_path / "scenes" / "tabletop").mkdir(parents=True)
    proc = run("--allow-cpu", "--scenes", tmp_path / "scenes", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "tabletop/transforms.json" in proc.stderr and "--prepare-scenes" in proc.stderr
    assert not (tmp_path / "out" / "table.md").exists()
