# SPDX-License-Identifier: GPL-3.0-or-later
"""The Blender test harness itself: a driver killed by a signal runs once more from the same
starting home; a crash that comes back fails."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "blender"))
import harness  # noqa: E402


def test_a_crashed_driver_runs_again_from_the_same_home(tmp_path):
    home = tmp_path / "home ü"
    home.mkdir()
    (home / "input.txt").write_text("prepared by the test")
    flag = tmp_path / "crashed once"
    with pytest.warns(harness.DriverCrashWarning, match="signal 11"):
        data = harness.run_driver("drv_crash_once.py", str(flag), str(home), "once", home=str(home), timeout=60)
    assert flag.exists()
    # the second run saw the home as the test left it, not the first run's leftovers
    assert json.loads(data["results"]["home"]["detail"]) == ["input.txt"]
    assert (home / "written by a run").read_text() == "x"
    assert (home / "input.txt").read_text() == "prepared by the test"


def test_a_driver_that_crashes_again_fails(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with pytest.warns(harness.DriverCrashWarning):
        with pytest.raises(AssertionError, match=r"printed no results \(exit -11\)"):
            harness.run_driver("drv_crash_once.py", str(tmp_path / "flag"), str(home), "always", home=str(home),
                               timeout=60)
