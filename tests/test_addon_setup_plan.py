# SPDX-License-Identifier: GPL-3.0-or-later
"""The set-up's decisions as plain functions (addon/backend_setup.py, no bpy): which PyTorch
build each platform gets, venv layouts on Windows / macOS / Linux, Blender's own Python as the
base, the child environment, pins, disk space, offline detection, and the script's pip runs
(with a stand-in pip)."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "addon", "backend_setup.py")


def _load():
    spec = importlib.util.spec_from_file_location("maskfield_backend_setup", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


bs = _load()


@pytest.mark.parametrize("system, arch, nvidia, choice, variant, index, fallback", [
    ("Linux", "x86_64", True, "AUTO", "cuda", None, False),          # PyPI's Linux wheels carry CUDA
    ("Linux", "x86_64", False, "AUTO", "cpu", bs.TORCH_INDEX + "cpu", True),
    ("Linux", "x86_64", True, "CPU", "cpu", bs.TORCH_INDEX + "cpu", True),
    ("Linux", "x86_64", False, "CUDA", "cuda", None, False),
    ("Linux", "aarch64", False, "AUTO", "cpu", None, False),
    ("Windows", "AMD64", True, "AUTO", "cuda", bs.TORCH_INDEX + bs.WINDOWS_CUDA_TAG, True),
    ("Windows", "AMD64", False, "AUTO", "cpu", None, False),          # PyPI's Windows wheels are CPU builds
    ("Windows", "AMD64", True, "CPU", "cpu", None, False),
    ("Darwin", "arm64", False, "AUTO", "mps", None, False),
    ("Darwin", "arm64", False, "CUDA", "mps", None, False),           # no CUDA on a Mac whatever is chosen
])
def test_torch_plan_per_platform(system, arch, nvidia, choice, variant, index, fallback):
    plan = bs.torch_plan(bs.Machine(system, arch, nvidia), choice)
    assert (plan.variant, plan.index_url, plan.fallback) == (variant, index, fallback)
    assert plan.note and plan.needed_bytes >= bs.GB
    if variant == "cuda":
        assert plan.needed_bytes > bs.torch_plan(bs.Machine("Linux", "x86_64", False)).needed_bytes


def test_torch_plan_refuses_intel_macs_and_unknown_systems():
    with pytest.raises(bs.SetupError, match="Intel Macs"):
        bs.torch_plan(bs.Machine("Darwin", "x86_64", False))
    with pytest.raises(bs.SetupError, match="Backend Python"):
        bs.torch_plan(bs.Machine("FreeBSD", "amd64", False))


def test_nvidia_driver_detection():
    none = lambda name: None  # noqa: E731
    assert bs.has_nvidia_driver("Linux", which=none, exists=lambda p: p == "/proc/driver/nvidia/version")
    assert bs.has_nvidia_driver("Linux", which=lambda n: "/usr/bin/nvidia-smi", exists=lambda p: False)
    assert not bs.has_nvidia_driver("Linux", which=none, exists=lambda p: False)
    assert bs.has_nvidia_driver("Windows", which=none, exists=lambda p: p.lower().endswith(
        "system32\\nvidia-smi.exe"))
    assert not bs.has_nvidia_driver("Darwin", which=lambda n: "/x/nvidia-smi", exists=lambda p: True)


def test_venv_layouts():
    assert bs.venv_python(r"C:\Users\ann\AppData\Roaming\Blender\ext\backend-env", "Windows") == \
        r"C:\Users\ann\AppData\Roaming\Blender\ext\backend-env\Scripts\python.exe"
    assert bs.venv_python("/Users/ann/Library/Application Support/Blender/4.2/env", "Darwin") == \
        "/Users/ann/Library/Application Support/Blender/4.2/env/bin/python"
    assert bs.venv_python("/home/ann/.config/blender/4.2/env", "Linux") == "/home/ann/.config/blender/4.2/env/bin/python"


def test_base_python_is_blenders_own():
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    # Blender 4.2+: sys.executable is the bundled Python
    win = r"C:\Program Files\Blender Foundation\Blender 4.2\4.2\python\bin\python.exe"
    assert bs.base_python(win, r"C:\x", "Windows", isfile=lambda p: p == win) == win
    mac = f"/Applications/Blender.app/Contents/Resources/4.2/python/bin/python{ver}"
    assert bs.base_python(mac, "/Applications/Blender.app/Contents/Resources/4.2/python", "Darwin",
                          isfile=lambda p: p == mac) == mac
    # sys.executable is the Blender program: the Python under sys.prefix
    prefix = r"C:\Program Files\Blender Foundation\Blender 4.2\4.2\python"
    assert bs.base_python(r"C:\Program Files\Blender Foundation\Blender 4.2\blender.exe", prefix, "Windows",
                          isfile=lambda p: p == prefix + r"\bin\python.exe") == prefix + r"\bin\python.exe"
    prefix = "/Applications/Blender.app/Contents/Resources/4.2/python"
    assert bs.base_python("/Applications/Blender.app/Contents/MacOS/Blender", prefix, "Darwin",
                          isfile=lambda p: p == f"{prefix}/bin/python{ver}") == f"{prefix}/bin/python{ver}"
    # a framework Python chosen by hand works as it is
    fw = f"/Library/Frameworks/Python.framework/Versions/{ver}/bin/python{ver}"
    assert bs.base_python(fw, "/x", "Darwin", isfile=lambda p: p == fw) == fw
    with pytest.raises(bs.SetupError, match="Python for the environment"):
        bs.base_python("/opt/blender/blender", "/opt/blender/4.2/python", "Linux", isfile=lambda p: False)


def test_child_environment_drops_blender_and_launcher_settings():
    env = bs.clean_env({"PATH": "/bin", "PYTHONPATH": "/blender/scripts", "PYTHONHOME": "/blender/python",
                        "__PYVENV_LAUNCHER__": "/Applications/Blender.app/Contents/MacOS/Blender",
                        "VIRTUAL_ENV": "/some/venv", "HTTPS_PROXY": "http://proxy:3128"}, offline=True)
    assert env["PATH"] == "/bin" and env["HTTPS_PROXY"] == "http://proxy:3128"
    for key in ("PYTHONPATH", "PYTHONHOME", "__PYVENV_LAUNCHER__", "VIRTUAL_ENV"):
        assert key not in env
    assert env["PYTHONUNBUFFERED"] == "1" and env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"
    assert env["MASKFIELD_OFFLINE"] == "1"


def test_pins_come_from_the_project(tmp_path):
    pins = bs.read_pins(os.path.join(ROOT, "requirements", "torch.txt"))
    reqs = bs.torch_requirements(pins)
    assert reqs == [f"torch=={pins['torch']}", f"torchvision=={pins['torchvision']}"]
    (tmp_path / "c.txt").write_text("# nothing pinned\ntorch>=2\nnumpy==1.26.4\n")
    with pytest.raises(bs.SetupError, match="torch"):
        bs.torch_requirements(bs.read_pins(str(tmp_path / "c.txt")))


def test_disk_space_check():
    plan = bs.torch_plan(bs.Machine("Linux", "x86_64", True))
    bs.check_disk(plan.needed_bytes, plan, "/x")
    with pytest.raises(bs.SetupError, match=r"0\.5 GB free"):
        bs.check_disk(bs.GB // 2, plan, "/x")


def test_offline_is_recognised_in_pips_output():
    assert bs.network_failure(["WARNING: Retrying ... NewConnectionError('<...>: Failed to establish a new "
                               "connection: [Errno -3] Temporary failure in name resolution')"])
    assert not bs.network_failure(["ERROR: No matching distribution found for torch==9.9"])
    assert "connect to the internet" in bs.offline_message("https://pypi.org/simple")
    assert bs.default_index({}) == "https://pypi.org/simple/"
    assert bs.default_index({"PIP_INDEX_URL": "https://mirror.example/simple"}) == "https://mirror.example/simple"


class _FakePip:
    """Stands for the pip subprocess: prints the lines it is given, returns the code."""

    def __init__(self, lines, rc):
        self.lines, self.rc, self.cmd = lines, rc, None

    def __call__(self, cmd, **kw):
        self.cmd = cmd
        outer = self

        class P:
            stdout = io.StringIO("".join(line + "\n" for line in outer.lines))

            def wait(self):
                return outer.rc

        return P()


def test_pip_run_reports_progress_and_passes_the_log_through(capsys):
    pip = _FakePip(["Collecting torch==2.14.1", "  Using cached torch-2.14.1.whl (900 MB)",
                    "Installing collected packages: torch", "Successfully installed torch-2.14.1"], 0)
    rc, tail = bs.run_pip(["torch==2.14.1"], "installing PyTorch", "/tmp/log.txt", runner=pip)
    assert rc == 0 and tail[-1] == "Successfully installed torch-2.14.1"
    assert pip.cmd[1:4] == ["-m", "pip", "install"] and pip.cmd[-2:] == ["--log", "/tmp/log.txt"]
    out = capsys.readouterr().out.splitlines()
    events = [json.loads(x) for x in out if x.startswith("{")]
    assert [e["done"] for e in events] == [0, 1, 2, 3, 4] and all(e["total"] == 4 for e in events)
    assert "Successfully installed torch-2.14.1" in out  # pip's own lines are the log


def test_script_says_offline_clearly(tmp_path):
    """The script run as the set-up runs it (by a new environment's Python), with no network: the
    PyTorch index and the package index cannot be reached."""
    env_dir = tmp_path / "env"
    # a throw-away environment (pip from the base Python) so that nothing touches the project's
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                    "--system-site-packages", str(env_dir)], check=True, timeout=120)
    python = bs.venv_python(str(env_dir))
    pins = tmp_path / "constraints.txt"
    pins.write_text("torch==0.0.1\ntorchvision==0.0.1\n")  # versions no environment has
    env = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="",
               PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_NO_CACHE_DIR="1")
    proc = subprocess.run([python, SCRIPT, "torch", "--constraints", str(pins), "--variant", "cpu",
                           "--index", "http://127.0.0.1:9/whl/cpu", "--fallback", "--log", str(tmp_path / "setup.log")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert any("cannot be reached: taking PyTorch from the default package index" in x for x in out), out
    assert any(x.startswith("$ pip install torch==0.0.1 torchvision==0.0.1") for x in out), out  # pip tried
    errors = [json.loads(x) for x in out if x.startswith('{"event": "error"')]
    assert errors and "Cannot reach the package index" in errors[-1]["message"]
    assert "connect to the internet" in proc.stderr
    assert (tmp_path / "setup.log").is_file()
