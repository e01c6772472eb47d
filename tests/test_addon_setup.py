# SPDX-License-Identifier: GPL-3.0-or-later
"""The real 'Set up backend' button in Blender (tests/blender/drv_setup.py): a new environment
in the extension's user folder, PyTorch for this machine and the bundled backend installed by
pip from the package index, progress and log in the preferences, 'Check backend' reporting the
devices, then Train and Segment running in that environment.

It downloads (or takes from pip's cache) PyTorch and the backend's packages, so it needs the
package index and a few minutes; it runs once, in the oldest Blender of the matrix (the one
most users have), and removes the environment afterwards (~7 GB with PyPI's CUDA build)."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")


@pytest.fixture(scope="module")
def setup_run(tmp_path_factory):
    blender = harness.one_blender("oldest")
    version = blender.version
    home = tmp_path_factory.mktemp("set up")
    # the backend's own subprocesses must not see this checkout through PYTHONPATH: they run the
    # copy that the set-up installed from the zip
    data = blender.run_driver("drv_setup.py", harness.built_zip(), str(home), home=str(home), timeout=2400)
    data["blender"] = version
    times = {k: round(v, 1) for k, v in data["times"].items()}
    installed = json.loads(data["results"].get("installed", {}).get("detail") or "{}")
    print(f"\nSet up backend in Blender {version}: {times}; backend: "
          f"{data['results'].get('backend_info', {}).get('detail')}; {len(installed)} packages: "
          + ", ".join(f"{k} {v}" for k, v in sorted(installed.items())))
    yield data
    shutil.rmtree(home, ignore_errors=True)  # the environment is several GB


def _all(data, *names):
    for name in names:
        harness.assert_check(data, name)


def test_setup_creates_the_environment_with_pinned_packages(setup_run):
    _all(setup_run, "no_backend_before", "needs_shown_before", "online_access_allowed", "setup_started",
         "setup_finished", "setup_env_python", "setup_pinned_torch", "setup_backend_installed", "setup_reported")


def test_setup_shows_progress_and_log(setup_run):
    _all(setup_run, "setup_progress_rises", "setup_stages", "setup_progress_drawn", "setup_log_drawn",
         "setup_log_file")


def test_check_backend_reports_devices(setup_run):
    _all(setup_run, "check_backend_devices")


def test_train_and_segment_run_in_the_new_environment(setup_run):
    _all(setup_run, "train_with_new_env", "train_wrote_run", "segment_with_new_env")


def test_every_check_passed(setup_run):
    bad = {k: v["detail"][:600] for k, v in setup_run["results"].items() if not v["ok"]}
    assert not bad, bad
