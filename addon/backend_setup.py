# SPDX-License-Identifier: GPL-3.0-or-later
"""Setting up the backend's Python environment (the "Set up backend" button).

What a machine needs and where things are, as plain functions of the facts (no bpy, stdlib
only), so that every platform's answer is unit-tested on any machine:

- :func:`torch_plan`: which PyTorch build, from which index (CUDA where an NVIDIA driver is
  present, the CPU build elsewhere, Apple's MPS build on Apple silicon);
- :func:`venv_python` / :func:`base_python`: a virtual environment's interpreter
  (``bin/python``, or ``Scripts\\python.exe`` on Windows) and the Python to create one with
  (Blender's own: ``<version>/python/bin/python3.11``, ``python.exe`` on Windows, inside
  ``Blender.app`` on macOS);
- :func:`clean_env`: the environment for the child processes (a macOS framework Python's
  ``__PYVENV_LAUNCHER__`` would make the new environment's Python pose as Blender's).

Run as a script by the new environment's Python, the same file installs packages with pip
and reports on the add-on's event protocol (one JSON object per line: ``progress``,
``error``), passing pip's own lines through as the log::

    python backend_setup.py torch --constraints FILE [--index URL] [--fallback] [--log FILE]
    python backend_setup.py pip --stage "installing the backend" [--log FILE] -- ARGS...
"""
from __future__ import annotations

import argparse
import json
import ntpath
import os
import platform
import posixpath
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

TORCH_INDEX = "https://download.pytorch.org/whl/"
# PyTorch's CUDA build for Windows (PyPI's Windows wheels are CPU-only). It matches the CUDA of
# PyPI's Linux wheels of the pinned torch (cu130); it needs an NVIDIA driver >= 580.
WINDOWS_CUDA_TAG = "cu130"
GB = 1024 ** 3
# installed size of the environment (measured on Linux: CUDA build 7.0 GB, see README), and a margin
NEEDED_BYTES = {"cuda": 8 * GB, "cpu": 2 * GB, "mps": 2 * GB}
# pip's words for "no network": then the set-up says what to do instead of a traceback
NETWORK_ERRORS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "No route to host",
                  "Connection refused", "ConnectTimeoutError", "ReadTimeoutError", "NewConnectionError",
                  "getaddrinfo failed", "nodename nor servname provided", "ProxyError", "SSLError",
                  "Could not fetch URL", "connection broken")


class SetupError(RuntimeError):
    """The set-up cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Machine:
    system: str   # platform.system(): "Linux", "Windows", "Darwin"
    arch: str     # platform.machine(): "x86_64", "AMD64", "arm64", "aarch64"
    nvidia: bool  # an NVIDIA driver is installed


@dataclass(frozen=True)
class TorchPlan:
    variant: str            # "cuda", "cpu" or "mps"
    index_url: str | None   # None: the default index (PyPI, or the user's own pip configuration)
    fallback: bool          # if index_url cannot be reached, take the default index's build
    note: str               # one line for the log: what and why

    @property
    def needed_bytes(self) -> int:
        return NEEDED_BYTES[self.variant]


def has_nvidia_driver(system: str, which: Callable[[str], str | None] = shutil.which,
                      exists: Callable[[str], bool] = os.path.exists) -> bool:
    """Whether an NVIDIA driver is installed (what decides between the CUDA and the CPU build)."""
    if system == "Darwin":
        return False
    if system == "Windows":
        root = os.environ.get("SystemRoot", r"C:\Windows")
        return bool(which("nvidia-smi")) or exists(ntpath.join(root, "System32", "nvidia-smi.exe"))
    return exists("/proc/driver/nvidia/version") or bool(which("nvidia-smi"))


def this_machine() -> Machine:
    system = platform.system()
    return Machine(system, platform.machine(), has_nvidia_driver(system))


def torch_plan(m: Machine, choice: str = "AUTO") -> TorchPlan:
    """The PyTorch build for machine ``m``. ``choice``: AUTO (by the NVIDIA driver), CPU or CUDA."""
    arch = m.arch.lower()
    x86 = arch in ("x86_64", "amd64", "x64", "i686")
    if m.system == "Darwin":
        if x86:
            raise SetupError("PyTorch no longer publishes builds for Intel Macs, so the backend cannot be set up "
                             "here. Use a Python with PyTorch installed (set 'Backend Python'), or an Apple "
                             "silicon or Linux/Windows machine.")
        return TorchPlan("mps", None, False, "Apple silicon: PyTorch from PyPI (CPU and MPS)")
    cuda = m.nvidia if choice == "AUTO" else choice == "CUDA"
    why = "NVIDIA driver found" if m.nvidia else "no NVIDIA driver"
    if choice != "AUTO":
        why = f"{choice} chosen in the preferences"
    if m.system == "Windows":
        if cuda and x86:
            return TorchPlan("cuda", TORCH_INDEX + WINDOWS_CUDA_TAG, True,
                             f"{why}: PyTorch's CUDA build ({WINDOWS_CUDA_TAG}) from {TORCH_INDEX}{WINDOWS_CUDA_TAG}")
        return TorchPlan("cpu", None, False, f"{why}: PyTorch from PyPI (CPU build on Windows)")
    if m.system == "Linux":
        if cuda or not x86:  # PyPI's Linux wheels are CUDA builds (aarch64: PyPI's only build)
            return TorchPlan("cuda" if cuda else "cpu", None, False, f"{why}: PyTorch from PyPI"
                             + (" (with CUDA)" if cuda else ""))
        return TorchPlan("cpu", TORCH_INDEX + "cpu", True,
                         f"{why}: PyTorch's CPU build from {TORCH_INDEX}cpu (about 1 GB less than the CUDA build)")
    raise SetupError(f"Setting up the backend on {m.system} ({m.arch}) is not supported; install the backend "
                     "into a Python of your own (pip install <extension folder>/backend) and set 'Backend Python'.")


def venv_python(env_dir: str, system: str | None = None) -> str:
    """The interpreter of a virtual environment made by ``python -m venv env_dir``."""
    system = system or platform.system()
    if system == "Windows":
        return ntpath.join(env_dir, "Scripts", "python.exe")
    return posixpath.join(env_dir, "bin", "python")


def base_python(executable: str, prefix: str, system: str | None = None,
                isfile: Callable[[str], bool] = os.path.isfile) -> str:
    """The Python to create the environment with: Blender's own.

    In Blender ``sys.executable`` is its bundled Python (``<version>/python/bin/python3.11``;
    ``...\\python\\bin\\python.exe`` on Windows; ``Blender.app/Contents/Resources/<version>/python/
    bin/python3.11`` on macOS). Where it is the Blender program itself, the Python is looked
    for under ``sys.prefix``.
    """
    system = system or platform.system()
    path = ntpath if system == "Windows" else posixpath
    name = path.basename(executable).lower()
    if executable and name.startswith("python") and isfile(executable):
        return executable
    if system == "Windows":
        candidates = [path.join(prefix, "bin", "python.exe"), path.join(prefix, "python.exe")]
    else:
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        candidates = [path.join(prefix, "bin", f"python{ver}"), path.join(prefix, "bin", "python3"),
                      path.join(prefix, "bin", "python")]
    for cand in candidates:
        if isfile(cand):
            return cand
    raise SetupError(f"Blender's Python was not found (looked at {executable!r} and under {prefix!r}). Set "
                     "'Python for the environment' in the preferences to a Python 3.10+ of your own.")


def clean_env(environ: dict, offline: bool = False) -> dict:
    """The child processes' environment: no Blender or launcher Python settings, UTF-8, unbuffered."""
    env = {k: v for k, v in environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__",
                        "VIRTUAL_ENV", "PYTHONNOUSERSITE")}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PYTHONUTF8="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1")
    if offline:
        env["MASKFIELD_OFFLINE"] = "1"
    return env


def read_pins(path: str) -> dict[str, str]:
    """``name==version`` lines of a requirements / constraints file, by lower-case name."""
    pins = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", line)
            if m:
                pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def torch_requirements(pins: dict[str, str]) -> list[str]:
    """torch and torchvision, pinned: never a bare ``torch`` (that would take whatever is newest)."""
    missing = [n for n in ("torch", "torchvision") if n not in pins]
    if missing:
        raise SetupError(f"The extension's constraints file pins no {' / '.join(missing)}; reinstall the extension.")
    return [f"torch=={pins['torch']}", f"torchvision=={pins['torchvision']}"]


def check_disk(free_bytes: int, plan: TorchPlan, where: str) -> None:
    if free_bytes < plan.needed_bytes:
        raise SetupError(f"Not enough disk space for the backend in {where}: {free_bytes / GB:.1f} GB free, "
                         f"about {plan.needed_bytes / GB:.0f} GB needed (PyTorch, {plan.variant} build). Free some "
                         "space and press 'Set up backend' again.")


def network_failure(lines: Iterable[str]) -> bool:
    return any(word in line for line in lines for word in NETWORK_ERRORS)


def default_index(environ: dict) -> str:
    """The package index pip uses when no --index-url is given (a mirror set in PIP_INDEX_URL, or PyPI)."""
    return environ.get("PIP_INDEX_URL", "").split()[0] if environ.get("PIP_INDEX_URL", "").strip() \
        else "https://pypi.org/simple/"


def offline_message(index: str) -> str:
    return (f"Cannot reach the package index ({index}). Setting up the backend downloads PyTorch and the "
            "backend's packages (1-7 GB): connect to the internet (or set PIP_INDEX_URL to a mirror) and press "
            "'Set up backend' again; what was installed so far is kept. Or install the backend into a Python "
            "of your own (pip install <extension folder>/backend) and set 'Backend Python'.")


# ----------------------------------------------------------------------------------------
# run by the new environment's Python


PIP_PHASES = (("Collecting ", 1), ("Downloading ", 2), ("Using cached ", 2), ("Installing collected", 3),
              ("Successfully installed", 4))


def _event(**kw) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def run_pip(args: Sequence[str], stage: str, log: str | None = None,
            runner: Callable[..., subprocess.Popen] = subprocess.Popen) -> tuple[int, list[str]]:
    """pip install ``args`` with this Python; pip's lines pass through, phases become progress events."""
    cmd = [sys.executable, "-m", "pip", "install", "--progress-bar", "off", *args]
    if log:
        cmd += ["--log", log]
    print(f"$ pip install {' '.join(args)}", flush=True)
    _event(event="progress", stage=stage, done=0, total=4)
    proc = runner(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                  errors="replace", env=clean_env(dict(os.environ)))
    phase = 0
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        print(line, flush=True)
        tail = (tail + [line])[-60:]
        for start, value in PIP_PHASES:
            if line.lstrip().startswith(start) and value > phase:
                phase = value
                _event(event="progress", stage=stage, done=phase, total=4)
    return proc.wait(), tail


def reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:  # an answer: the server is there
        return exc.code < 500
    except (OSError, ValueError):
        return False


def _fail(message: str, code: int = 3) -> int:
    _event(event="error", message=message)
    print(message, file=sys.stderr, flush=True)
    return code


def _cmd_torch(a) -> int:
    plan = TorchPlan(a.variant, a.index or None, a.fallback, a.note or "")
    reqs = torch_requirements(read_pins(a.constraints))
    if plan.note:
        print(plan.note, flush=True)
    index = plan.index_url
    if index and not reachable(index.rstrip("/") + "/torch/"):
        if not plan.fallback:
            return _fail(offline_message(index))
        print(f"{index} cannot be reached: taking PyTorch from the default package index instead (on Linux "
              "its CUDA build, which runs on the CPU too but is about 5 GB larger; on Windows its CPU build).",
              flush=True)
        index = None
    extra = ["--index-url", index] if index else []
    rc, tail = run_pip([*reqs, "-c", a.constraints, *extra], f"installing PyTorch ({plan.variant if index == plan.index_url else 'default index'})", a.log)
    return _pip_outcome(rc, tail, index, f"installing {' '.join(reqs)}", a.log)


def _pip_outcome(rc: int, tail: list[str], index: str | None, what: str, log: str | None) -> int:
    if rc == 0:
        return 0
    # with no network pip often says only that no version matches: ask the index itself
    index = index or default_index(dict(os.environ))
    if network_failure(tail) or not reachable(index):
        return _fail(offline_message(index))
    return _fail(f"pip failed while {what} (exit {rc}); the log is in {log}:\n" + "\n".join(tail[-8:]), rc)


def _cmd_pip(a) -> int:
    rc, tail = run_pip(a.args, a.stage, a.log)
    return _pip_outcome(rc, tail, None, a.stage, a.log)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="backend_setup.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("torch", help="install the pinned torch and torchvision")
    t.add_argument("--constraints", required=True)
    t.add_argument("--variant", default="cpu")
    t.add_argument("--index", default="")
    t.add_argument("--fallback", action="store_true")
    t.add_argument("--note", default="")
    t.add_argument("--log", default=None)
    p = sub.add_parser("pip", help="pip install ARGS with progress events")
    p.add_argument("--stage", default="installing")
    p.add_argument("--log", default=None)
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    if a.cmd == "pip":
        a.args = a.args[1:] if a.args[:1] == ["--"] else a.args
        return _cmd_pip(a)
    return _cmd_torch(a)


if __name__ == "__main__":
    sys.exit(main())
