# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on under misuse in real Blender (issue 11, item 10): see tests/blender/drv_misuse.py.
Last, a training on the real backend whose Blender dies (SIGKILL, no clean-up): the backend
must stop by itself, having saved, and the same command must resume the run."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")


@pytest.fixture(scope="module")
def misuse(tmp_path_factory):
    home = tmp_path_factory.mktemp("addon misuse")
    return harness.run_driver("drv_misuse.py", harness.built_zip(), str(home), home=str(home), timeout=300)


def _all(data, *prefixes):
    names = [k for k in data["results"] if k.startswith(prefixes)]
    assert names, f"no checks named {prefixes}; stderr:\n{data['stderr'][-3000:]}"
    for name in names:
        harness.assert_check(data, name)


def test_segment_before_training(misuse):
    _all(misuse, "segment_before_training")


def test_collection_instances_are_rendered_placed_and_segmented(misuse):
    _all(misuse, "collection_instances", "instances_", "verts_instancer_refused")


def test_geometry_nodes_instances_are_faces_of_their_object(misuse):
    # rocks scattered on a field by geometry nodes: in the face table, in Faces mode, in the
    # source signature; the temporary copy that realizes them is gone afterwards
    _all(misuse, "geometry_nodes_instances", "gn_instances_")


def test_backend_warnings_are_shown_when_training_ends(misuse):
    _all(misuse, "backend_warnings", "warnings_")


def test_train_pressed_twice(misuse):
    _all(misuse, "train_twice")


def test_modifiers_transforms_and_linked_objects(misuse):
    _all(misuse, "train_modifiers_linked", "train_with_modifiers", "faces_", "render_as_shown", "originals_untouched")


def test_users_collection_of_the_same_name_is_never_touched(misuse):
    _all(misuse, "collection_clash", "clash_", "clear_keeps_theirs", "split_refused_", "select_linked")


def test_backend_python_without_torch(misuse):
    _all(misuse, "python_without_torch", "check_backend_names_torch", "train_names_torch")


def test_disable_and_enable_while_training(misuse):
    _all(misuse, "disable_enable", "disable_stops", "enable_again_resumes")


def test_every_check_passed(misuse):
    bad = {k: v["detail"][:500] for k, v in misuse["results"].items() if not v["ok"]}
    assert not bad, bad


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="checks the process table of Linux")
def test_blender_dying_mid_training_leaves_no_process_and_the_run_resumes(tmp_path):
    env = harness.blender_env(str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(harness.HERE, "drv_misuse.py"), harness.built_zip(),
                           str(tmp_path), "quit"], capture_output=True, text=True, timeout=400, env=env,
                          cwd=harness.ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MASKFIELD_QUIT ")), None)
    assert line, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    info = json.loads(line[len("MASKFIELD_QUIT "):])
    assert proc.returncode == -9 and info["mid_fit"], info  # killed mid-fit, before any checkpoint
    end = time.monotonic() + 30
    while _alive(info["pid"]) and time.monotonic() < end:
        time.sleep(0.2)
    assert not _alive(info["pid"]), "the backend outlived Blender"
    run = info["run"]
    assert os.path.isfile(os.path.join(run, "fit_checkpoint.pt"))  # written as Blender's death was seen
    # nothing half-written, no lock left, and no error report: the backend stopped as if cancelled
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n in (".maskfield.lock", "logs")], os.listdir(run)
    # Train again (the add-on runs the same command): the fit resumes from its checkpoint
    argv = info["argv"]
    again = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=harness.ROOT,
                             env={**os.environ, "PYTHONPATH": os.path.join(harness.ROOT, "backend")})
    resumed, seen = None, []
    end = time.monotonic() + 120
    try:
        while time.monotonic() < end and resumed is None:
            ready, _, _ = select.select([again.stdout], [], [], 1.0)
            if not ready:
                if again.poll() is not None:
                    break
                continue
            text = again.stdout.readline()
            if not text:
                break
            seen.append(text)
            if "resuming the fit at step" in text:
                resumed = text
    finally:
        again.terminate()
        again.wait(30)
    assert resumed, "".join(seen[-20:])
    step = int(resumed.split("resuming the fit at step ")[1].split()[0])
    assert step >= 5  # the checkpoint the backend saved when Blender was gone (no periodic one yet)
