# SPDX-License-Identifier: GPL-3.0-or-later
"""Driver: the real 'Set up backend' button, then 'Check backend', then Train with that environment.

    python tests/blender/drv_setup.py ZIP WORKDIR

As a user does it: install the extension zip, allow online access (Preferences > System), press
Set up backend (a new virtual environment in the extension's user folder, PyTorch for this
machine and the bundled backend installed by pip from the package index), watch the progress
and log drawn in the preferences, press Check backend, then select the tabletop's objects
and press Train (tiny settings: this shows the environment works, not quality) and Segment.
Records the set-up's time, its steps and what pip installed (``pip list``, size on disk).
MASKFIELD_SETUP_TIMEOUT: seconds allowed for the set-up (default 1800).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from common import check, section  # noqa: E402

import bpy  # noqa: E402

sys.path.insert(0, os.path.join(common.ROOT, "tools"))
import make_tabletop  # noqa: E402


class Recorder:
    """Stands for a UILayout: keeps what a draw function shows (labels, progress bars)."""

    def __init__(self, shown: list):
        self.shown = shown

    def label(self, text="", **_kw):
        self.shown.append(("label", text))

    def progress(self, factor=0.0, text="", **_kw):
        self.shown.append(("progress", factor, text))

    def __getattr__(self, _name):
        def any_call(*_a, **_kw):
            return Recorder(self.shown)
        return any_call


def draw_preferences(mf) -> list:
    shown: list = []
    prefs = bpy.context.preferences.addons[common.MODULE].preferences

    class Self:
        layout = Recorder(shown)

        def __getattr__(self, name):
            return getattr(prefs, name)

    mf.preferences.MaskFieldPreferences.draw(Self(), bpy.context)
    return shown


def du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def main() -> None:
    zip_path, work = sys.argv[1], os.path.join(sys.argv[2], "setup wörk")
    os.makedirs(work, exist_ok=True)
    mf = common.install(zip_path)
    client, STATUS = mf.backend_client, mf.status.STATUS
    prefs = bpy.context.preferences.addons[common.MODULE].preferences
    prefs.python_path = ""
    env_dir = mf.preferences.managed_env_dir()
    env_python = mf.preferences.venv_python(env_dir)
    check("no_backend_before", not os.path.exists(env_python), env_python)
    shown = draw_preferences(mf)
    check("needs_shown_before", any(k == "label" and "GB of disk" in t[0] for k, *t in shown), shown)

    with section("setup"):
        bpy.context.preferences.system.use_online_access = True  # what the user allows in Preferences > System
        check("online_access_allowed", bpy.app.online_access)
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.setup_backend()
        job = client.active_job("setup")
        check("setup_started", res == {"FINISHED"} and job is not None, (res, STATUS.error))
        common.RESULTS["setup_steps"] = {"ok": True, "detail": json.dumps(job.steps if job else [])}
        limit = t0 + float(os.environ.get("MASKFIELD_SETUP_TIMEOUT", "1800"))
        seen, drawn_progress, drawn_log = [], False, False
        while job is not None and job.running and time.perf_counter() < limit:
            client.pump(3.0, until=lambda: not job.running)
            seen.append((round(time.perf_counter() - t0), round(job.fraction, 3), job.stage_text))
            shown = draw_preferences(mf)
            drawn_progress |= any(k == "progress" and "Setting up backend" in t[1] for k, *t in shown)
            drawn_log |= any(k == "label" and "setup.log" in t[0] for k, *t in shown)
        common.TIMES["setup_s"] = time.perf_counter() - t0
        check("setup_finished", job is not None and job.state == "finished",
              job and (job.state, job.error, list(job.logs)[-20:]))
        fractions = [f for _, f, _ in seen]
        check("setup_progress_rises", len(set(fractions)) >= 4 and fractions == sorted(fractions), seen[-60:])
        check("setup_stages", any("installing PyTorch (" in st for _, _, st in seen)
              and any("installing the backend" in st for _, _, st in seen), seen[-60:])
        check("setup_progress_drawn", drawn_progress)
        check("setup_log_drawn", drawn_log)
        check("setup_log_file", os.path.isfile(os.path.join(env_dir, mf.preferences.SETUP_LOG)))
        check("setup_env_python", os.path.isfile(env_python) and mf.preferences.resolve_python() == env_python,
              env_python)
        check("setup_reported", "Backend ready" in STATUS.info, (STATUS.info, STATUS.error))
        common.RESULTS["setup_timeline"] = {"ok": True, "detail": json.dumps(seen[::max(1, len(seen) // 40)])}
        common.RESULTS["setup_log_tail"] = {"ok": True, "detail": "\n".join(list(job.logs)[-25:]) if job else ""}
        listing = subprocess.run([env_python, "-m", "pip", "list", "--format", "json"], capture_output=True,
                                 text=True, timeout=300)
        pkgs = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listing.stdout or "[]")}
        common.RESULTS["installed"] = {"ok": True, "detail": json.dumps(pkgs)}
        common.TIMES["env_gb"] = du(env_dir) / 1024 ** 3
        pins = mf.backend_setup.read_pins(os.path.join(mf.preferences.backend_source_dir(), "constraints.txt"))
        check("setup_pinned_torch", pkgs.get("torch", "").split("+")[0] == pins["torch"]
              and pkgs.get("torchvision", "").split("+")[0] == pins["torchvision"]
              and pkgs.get("numpy") == pins.get("numpy", pkgs.get("numpy")), (pins, pkgs))
        check("setup_backend_installed", "maskfield" in pkgs and "segment-anything" in pkgs
              and "open-clip-torch" in pkgs and "gsplat" in pkgs, sorted(pkgs))

    with section("check_backend"):
        res = bpy.ops.maskfield.detect_backend()
        job = client.active_job("detect")
        client.pump(300, until=lambda: job is None or not job.running)
        info = json.loads(prefs.backend_info or "{}")
        described = mf.preferences.describe_info(info)
        common.RESULTS["backend_info"] = {"ok": True, "detail": described}
        check("check_backend_devices", res == {"FINISHED"} and info.get("python") == env_python
              and "devices: " in described and "cpu" in described.split("devices: ")[1]
              and f"torch {pins['torch']}" in described, (prefs.backend_info, STATUS.error))

    with section("train_and_segment"):
        bpy.ops.wm.read_homefile(use_empty=True)
        scene = bpy.context.scene
        objs = make_tabletop.build_tabletop(seed=0, scene=scene)
        bpy.context.view_layer.update()
        for ob in bpy.context.view_layer.objects:
            ob.select_set(ob in objs)
        s = scene.maskfield
        s.views, s.resolution, s.seed_points, s.samples = 6, 32, 1500, 2
        s.iterations, s.field_iterations = 20, 30
        s.device = "cpu"
        s.run_dir = os.path.join(work, "run")
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.train()
        job = client.active_job("train")
        ok = client.pump(900)
        common.TIMES["train_s"] = time.perf_counter() - t0
        check("train_with_new_env", res == {"FINISHED"} and ok and job is not None and job.state == "finished"
              and job.steps[0][0] == env_python, job and (job.state, job.error, job.steps[0][:3], list(job.logs)[-8:]))
        check("train_wrote_run", all(os.path.isfile(os.path.join(s.run_dir, n))
                                     for n in ("gaussians.ply", "field.pt", "run.json")), os.listdir(s.run_dir))
        last = mf.operators._LAST_SEGMENT
        last[0] = None
        bpy.ops.maskfield.prompt_add(text="red mug")
        s.mode = "FACES"
        res = bpy.ops.maskfield.segment()
        client.pump(300, until=lambda: last[0] is not None)
        seg = last[0]
        check("segment_with_new_env", res == {"FINISHED"} and seg is not None and seg.state == "finished",
              seg and (seg.state, seg.error))
    client.kill_all()
    common.finish()


if __name__ == "__main__":
    main()
