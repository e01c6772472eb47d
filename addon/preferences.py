# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: where the backend's Python is, setting it up, devices, weights."""
from __future__ import annotations

import json
import os
import shutil
import sys

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import backend_client, backend_setup
from .backend_client import BackendError
from .status import STATUS, wrap

PACKAGE = __package__ or "maskfield"
ENV_FOLDER = "backend-env"


def get_prefs(context=None):
    """The add-on's preferences, or None when the package is not enabled as an add-on."""
    context = context or bpy.context
    addon = context.preferences.addons.get(PACKAGE)
    return addon.preferences if addon is not None else None


def extension_user_dir() -> str:
    """The extension's own writable folder (kept across updates of the extension)."""
    try:
        return bpy.utils.extension_path_user(PACKAGE, create=True)
    except (ValueError, AttributeError, RuntimeError):
        path = bpy.utils.user_resource("DATAFILES", path="maskfield", create=True)
        return path


def managed_env_dir() -> str:
    return os.path.join(extension_user_dir(), ENV_FOLDER)


def venv_python(env_dir: str) -> str:
    return backend_setup.venv_python(env_dir)


def backend_source_dir() -> str | None:
    """The backend source bundled in the extension (backend/), or the repository's one."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "backend"), os.path.join(os.path.dirname(here), "backend")):
        if os.path.isfile(os.path.join(cand, "pyproject.toml")) and os.path.isdir(os.path.join(cand, "maskfield")):
            return cand
    return None


def online_allowed() -> bool:
    return bool(getattr(bpy.app, "online_access", True))


def resolve_python(context=None) -> str:
    """The backend interpreter to use, or BackendError saying how to get one."""
    prefs = get_prefs(context)
    path = bpy.path.abspath(prefs.python_path).strip() if prefs is not None else ""
    if path:
        if not os.path.isfile(path):
            raise BackendError(f"The backend Python '{path}' does not exist. Fix the path in Preferences > "
                               "Add-ons > MaskField, or clear it and press 'Set up backend'.")
        return path
    managed = venv_python(managed_env_dir())
    if os.path.isfile(managed):
        return managed
    raise BackendError("No MaskField backend is configured. Open Preferences > Add-ons > MaskField and press "
                       "'Set up backend' (downloads PyTorch), or set 'Backend Python' to a Python where the "
                       "maskfield package is installed.")


def weights_dir(context=None) -> str:
    prefs = get_prefs(context)
    return bpy.path.abspath(prefs.weights_dir).strip() if prefs is not None and prefs.weights_dir else ""


def backend_env(context=None) -> dict:
    return backend_client.child_env(offline=not online_allowed())


def backend_info(context=None) -> dict:
    prefs = get_prefs(context)
    if prefs is None or not prefs.backend_info:
        return {}
    try:
        return json.loads(prefs.backend_info)
    except ValueError:
        return {}


def _parse_info(job: backend_client.Job) -> dict:
    text = "\n".join(job.stdout_text).strip()
    for res in reversed(job.results):
        if res.get("stage") == "info" or "devices" in res:
            return dict(res)
    try:
        start = text.index("{")
        return json.loads(text[start:])
    except ValueError:
        pass
    return {"raw": text[-500:]} if text else {}


def start_detect(context, python: str | None = None) -> backend_client.Job:
    python = python or resolve_python(context)

    def done(job: backend_client.Job) -> None:
        prefs = get_prefs()
        if job.state == "finished":
            info = _parse_info(job)
            info["python"] = python
            if prefs is not None:
                prefs.backend_info = json.dumps(info)
            STATUS.set_info(f"Backend found: {describe_info(info)}")
        elif job.state == "failed":
            if prefs is not None:
                prefs.backend_info = json.dumps({"python": python, "error": job.error})
            STATUS.set_error(job.error or "the backend did not answer")

    job = backend_client.Job([backend_client.backend_command(python, "info")], kind="detect",
                             label="Checking backend", json_events=False, env=backend_env(context),
                             on_done=done)
    return backend_client.start(job)


def describe_info(info: dict) -> str:
    if not info:
        return "not checked"
    if info.get("error"):
        return "not working"
    parts = []
    versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
    version = versions.get("maskfield") or info.get("maskfield") or info.get("version")
    if isinstance(version, dict):
        version = version.get("version")
    if version:
        parts.append(f"maskfield {version}")
    torch_v = versions.get("torch") or info.get("torch")
    if isinstance(torch_v, dict):
        torch_v = torch_v.get("version")
    if torch_v:
        parts.append(f"torch {torch_v}")
    devices = info.get("devices")
    if isinstance(devices, dict):
        devices = [k for k, v in devices.items() if v]
    if isinstance(devices, (list, tuple)):
        names = []
        for d in devices:
            names.append(d.get("name") or d.get("type") or str(d) if isinstance(d, dict) else str(d))
        if info.get("cuda_name"):
            names = [f"cuda ({info['cuda_name']})" if nm == "cuda" else nm for nm in names]
        parts.append("devices: " + ", ".join(names))
    return "; ".join(parts) or "working"


SETUP_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_setup.py")
SETUP_LOG = "setup.log"


def constraints_file(src: str) -> str | None:
    """The pins the set-up installs by: the zip's backend/constraints.txt (written by build.py),
    or the repository's requirements/torch.txt when the add-on runs from a checkout."""
    for cand in (os.path.join(src, "constraints.txt"),
                 os.path.join(os.path.dirname(src), "requirements", "torch.txt")):
        if os.path.isfile(cand):
            return cand
    return None


def setup_needs() -> str:
    """What 'Set up backend' needs on this machine, in one line for the preferences."""
    try:
        plan = backend_setup.torch_plan(backend_setup.this_machine())
    except backend_setup.SetupError as exc:
        return str(exc)
    return (f"Set up backend installs PyTorch ({plan.variant} build) and the backend: about "
            f"{plan.needed_bytes // backend_setup.GB} GB of disk, a few minutes online.")


def setup_steps(context) -> tuple[list[list[str]], list[str]]:
    """The set-up as a chain of commands: create the environment (if it is not there), PyTorch
    for this machine (pinned), the bundled backend, then ``maskfield info``."""
    prefs = get_prefs(context)
    src = backend_source_dir()
    if src is None:
        raise BackendError("The backend source is missing from this installation of the extension; "
                           "reinstall the MaskField extension.")
    if not online_allowed():
        raise BackendError("Blender is set to work offline. Setting up the backend downloads PyTorch and other "
                           "packages from PyPI (1-7 GB): allow it in Preferences > System > Network > Allow "
                           "Online Access, or install the backend yourself (pip install <extension>/backend) and "
                           "set 'Backend Python'.")
    pins = constraints_file(src)
    if pins is None:
        raise BackendError("The extension has no constraints.txt with the PyTorch version to install; reinstall "
                           "the MaskField extension.")
    choice = prefs.torch_variant if prefs is not None else "AUTO"
    try:
        plan = backend_setup.torch_plan(backend_setup.this_machine(), choice)
        if prefs is not None and prefs.setup_python:
            base = bpy.path.abspath(prefs.setup_python).strip()
        else:
            base = backend_setup.base_python(sys.executable, sys.prefix)
    except backend_setup.SetupError as exc:
        raise BackendError(str(exc)) from exc
    if not base or not os.path.isfile(base):
        raise BackendError(f"No Python to create the backend environment with ('{base}'). Set 'Python for the "
                           "environment' in the preferences.")
    env_dir = managed_env_dir()
    try:
        backend_setup.check_disk(shutil.disk_usage(os.path.dirname(env_dir)).free, plan, os.path.dirname(env_dir))
    except backend_setup.SetupError as exc:
        raise BackendError(str(exc)) from exc
    py = venv_python(env_dir)
    log = os.path.join(env_dir, SETUP_LOG)
    steps: list[list[str]] = []
    labels: list[str] = []
    if not os.path.isfile(py):
        steps.append([base, "-m", "venv", env_dir])
        labels.append("creating environment")
    torch = [py, SETUP_SCRIPT, "torch", "--constraints", pins, "--variant", plan.variant, "--note", plan.note,
             "--log", log]
    if plan.index_url:
        torch += ["--index", plan.index_url]
    if plan.fallback:
        torch.append("--fallback")
    steps.append(torch)
    labels.append(f"installing PyTorch ({plan.variant})")
    steps.append([py, SETUP_SCRIPT, "pip", "--stage", "installing the backend", "--log", log, "--",
                  src + "[priors]", "-c", pins])
    labels.append("installing the backend")
    steps.append(backend_client.backend_command(py, "info"))
    labels.append("checking")
    return steps, labels


def start_setup(context) -> backend_client.Job:
    if backend_client.active_job("setup") is not None:
        raise BackendError("The backend is being set up already.")
    steps, labels = setup_steps(context)
    env_dir = managed_env_dir()
    log = os.path.join(env_dir, SETUP_LOG)

    def done(job: backend_client.Job) -> None:
        prefs = get_prefs()
        if job.state == "finished":
            info = _parse_info(job)
            info["python"] = venv_python(env_dir)
            info["setup_seconds"] = round(job.elapsed, 1)
            if prefs is not None:
                prefs.backend_info = json.dumps(info)
                prefs.python_path = ""
            STATUS.set_info(f"Backend ready in {env_dir} ({job.elapsed / 60:.1f} min): {describe_info(info)}")
        elif job.state == "failed":
            STATUS.set_error(f"Setting up the backend failed: {job.error} (log: {log})")
        else:
            STATUS.set_info("Backend set-up cancelled; press 'Set up backend' again to go on.")

    env = backend_setup.clean_env(dict(os.environ))
    job = backend_client.Job(steps, kind="setup", label="Setting up backend", step_labels=labels,
                             json_events=True, env=env, on_done=done)
    return backend_client.start(job)


class MASKFIELD_OT_setup_backend(bpy.types.Operator):
    """Create a Python environment in the extension's folder and install the MaskField backend into it"""

    bl_idname = "maskfield.setup_backend"
    bl_label = "Set up backend"

    def execute(self, context):
        try:
            start_setup(context)
        except BackendError as exc:
            STATUS.set_error(str(exc))
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, "Setting up the MaskField backend (this downloads PyTorch: several minutes)")
        return {"FINISHED"}


class MASKFIELD_OT_detect_backend(bpy.types.Operator):
    """Check the backend Python: versions and the devices PyTorch sees"""

    bl_idname = "maskfield.detect_backend"
    bl_label = "Check backend"

    def execute(self, context):
        try:
            start_detect(context)
        except BackendError as exc:
            STATUS.set_error(str(exc))
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class MASKFIELD_OT_open_preferences(bpy.types.Operator):
    """Open the MaskField add-on preferences"""

    bl_idname = "maskfield.open_preferences"
    bl_label = "MaskField Preferences"

    def execute(self, context):
        try:
            bpy.ops.screen.userpref_show("INVOKE_DEFAULT")
            context.preferences.active_section = "ADDONS"
            bpy.ops.preferences.addon_show(module=PACKAGE)
        except Exception as exc:  # pragma: no cover - UI only
            self.report({"WARNING"}, f"open Preferences > Add-ons > MaskField ({exc})")
        return {"FINISHED"}


class MaskFieldPreferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    python_path: StringProperty(  # type: ignore[valid-type]
        name="Backend Python", subtype="FILE_PATH",
        description="Python interpreter with the maskfield package installed. Empty: the environment made by "
                    "'Set up backend'")
    weights_dir: StringProperty(  # type: ignore[valid-type]
        name="Weights folder", subtype="DIR_PATH",
        description="Where SAM and CLIP weights are kept (downloaded there on first use if online access is "
                    "allowed). Empty: the backend's default cache")
    setup_python: StringProperty(  # type: ignore[valid-type]
        name="Python for the environment", subtype="FILE_PATH",
        description="Python used to create the backend environment (empty: Blender's own Python)")
    torch_variant: EnumProperty(  # type: ignore[valid-type]
        name="PyTorch",
        items=[("AUTO", "Automatic", "CUDA build where an NVIDIA driver is installed, CPU build elsewhere "
                "(MPS on Apple silicon)"),
               ("CPU", "CPU only (smaller)", "PyTorch's CPU-only build (about 1 GB installed)"),
               ("CUDA", "CUDA (NVIDIA)", "PyTorch's CUDA build (about 7 GB installed; needs an NVIDIA driver)")],
        default="AUTO")
    use_serve: BoolProperty(  # type: ignore[valid-type]
        name="Keep backend loaded", default=True,
        description="Keep a backend process with the trained field loaded between Segment clicks (faster)")
    backend_info: StringProperty(default="", options={"HIDDEN"})  # type: ignore[valid-type]

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "python_path")
        try:
            python = resolve_python(context)
        except BackendError as exc:
            python = ""
            box = col.box()
            for line in wrap(str(exc), 90):
                box.label(text=line, icon="NONE")
        info = backend_info(context)
        if python:
            row = col.row()
            if info.get("python") == python and not info.get("error"):
                row.label(text=f"Backend: {describe_info(info)}", icon="CHECKMARK")
            elif info.get("python") == python and info.get("error"):
                row.label(text="Backend not working (see below)", icon="ERROR")
            else:
                row.label(text=f"Backend Python: {python}", icon="QUESTION")
        row = col.row(align=True)
        row.operator(MASKFIELD_OT_setup_backend.bl_idname, icon="IMPORT")
        row.operator(MASKFIELD_OT_detect_backend.bl_idname, icon="FILE_REFRESH")
        job = backend_client.active_job("setup") or backend_client.active_job("detect")
        if job is not None:
            if hasattr(col, "progress"):
                col.progress(factor=job.fraction, type="BAR", text=f"{job.label}: {job.stage_text}")
            else:  # pragma: no cover
                col.label(text=f"{job.label}: {job.stage_text}")
            col.operator("maskfield.cancel", icon="CANCEL")
            for line in list(job.logs)[-6:]:
                col.label(text=line[:120])
            if job.kind == "setup":
                col.label(text=f"Full log: {os.path.join(managed_env_dir(), SETUP_LOG)}", icon="TEXT")
        elif not python:
            col.label(text=setup_needs(), icon="INFO")
        if STATUS.error:
            box = col.box()
            for line in wrap(STATUS.error, 90)[:10]:
                box.label(text=line)
        sub = col.column(heading="Set-up")
        sub.prop(self, "setup_python")
        sub.prop(self, "torch_variant")
        col.separator()
        col.prop(self, "weights_dir")
        if not online_allowed():
            col.label(text="Blender works offline: the backend will not download weights.", icon="INFO")
        col.prop(self, "use_serve")


classes = (
    MASKFIELD_OT_setup_backend,
    MASKFIELD_OT_detect_backend,
    MASKFIELD_OT_open_preferences,
    MaskFieldPreferences,
)
