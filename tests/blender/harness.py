# SPDX-License-Identifier: GPL-3.0-or-later
"""pytest side of the Blender tests: build the extension once, run driver scripts in Blender.

Blender (the bpy module) runs in a subprocess of pytest, with its user folders in a temporary
folder, so that the tests never touch a real Blender configuration and bpy is never imported
into the pytest process.

**Blender versions.** The add-on is tested in every Blender of the matrix: the LTS releases
pinned in ``requirements/blender-<version>.txt`` (each in its own environment,
``.venv-blender/<version>/``, made and reused by ``scripts/ensure_blender_env.sh``) and the
``bpy`` of the project's own environment (5.0). A test takes the ``blender`` fixture
(``from harness import blender``) to run once per version::

    def test_something(blender, tmp_path):
        data = blender.run_driver("drv_something.py", harness.built_zip(), home=str(tmp_path))

``MASKFIELD_BLENDER_VERSIONS=4.2,5.0`` narrows the matrix (e.g. while working on one test).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MARKER = "MASKFIELD_RESULTS "
ENSURE_ENV = os.path.join(ROOT, "scripts", "ensure_blender_env.sh")


def have_bpy() -> bool:
    return importlib.util.find_spec("bpy") is not None


def main_version() -> str:
    """The Blender version of this environment's bpy ("5.0"), without importing it."""
    try:
        return ".".join(importlib.metadata.version("bpy").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return ""


def pinned_versions() -> list[str]:
    """Blender versions with their own environment: requirements/blender-<version>.txt."""
    names = glob.glob(os.path.join(ROOT, "requirements", "blender-*.txt"))
    versions = [os.path.basename(n)[len("blender-"):-len(".txt")] for n in names]
    return sorted(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


def blender_versions() -> list[str]:
    """The matrix: every pinned LTS plus this environment's bpy, or MASKFIELD_BLENDER_VERSIONS."""
    every = pinned_versions() + ([main_version()] if main_version() else [])
    wanted = os.environ.get("MASKFIELD_BLENDER_VERSIONS", "").replace(" ", "")
    if not wanted:
        return every
    chosen = [v for v in wanted.split(",") if v]
    unknown = [v for v in chosen if v not in every]
    if unknown:
        raise pytest.UsageError(f"MASKFIELD_BLENDER_VERSIONS names {unknown}; the matrix has {every}")
    return chosen


@functools.lru_cache(maxsize=None)
def blender_python(version: str) -> str:
    """The Python whose bpy module is Blender ``version``: made on first use, then reused."""
    if version == main_version():
        return sys.executable
    proc = subprocess.run(["bash", ENSURE_ENV, version], capture_output=True, text=True, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not os.path.isfile(lines[-1]):
        raise AssertionError(f"could not prepare the environment for Blender {version} "
                             f"(scripts/ensure_blender_env.sh {version}, exit {proc.returncode}); it installs "
                             f"the pinned bpy wheel from the package index:\n{proc.stderr[-3000:]}")
    return lines[-1]


@dataclasses.dataclass(frozen=True)
class Blender:
    """One Blender of the matrix: its version and the Python that imports its bpy."""

    version: str
    python: str

    def __str__(self) -> str:
        return f"Blender {self.version}"

    def run_driver(self, script: str, *args: str, home: str, timeout: float = 300,
                   extra_env: dict | None = None) -> dict:
        data = run_driver(script, *args, home=home, timeout=timeout, extra_env=extra_env, python=self.python)
        ran = data.get("blender_version", "")
        assert ran.startswith(self.version + "."), f"{script} ran in Blender {ran!r}, not {self.version}"
        return data

    def run(self, argv: list[str], home: str, timeout: float = 300, extra_env: dict | None = None):
        """Run a script with this Blender's Python (user folders under ``home``)."""
        return subprocess.run([self.python, *argv], capture_output=True, text=True, timeout=timeout,
                              env=blender_env(home, extra_env), cwd=ROOT)

    def blender_ext(self) -> str:
        """Blender's own extension tool (blender_ext.py) as shipped with this version."""
        code = ("import importlib.util, glob, os; s = importlib.util.find_spec('bpy'); "
                "d = list(s.submodule_search_locations)[0]; "
                "print(sorted(glob.glob(os.path.join(d, '*', 'scripts', 'addons_core', 'bl_pkg', 'cli', "
                "'blender_ext.py')))[-1])")
        out = subprocess.run([self.python, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()


@pytest.fixture(scope="session", params=blender_versions(), ids=lambda v: f"blender{v}")
def blender(request) -> Blender:
    """Each Blender version of the matrix in turn (see the module's docstring)."""
    return Blender(request.param, blender_python(request.param))


def one_blender(which: str = "newest") -> Blender:
    """One Blender of the matrix, for the tests too costly to run in each (real training)."""
    versions = blender_versions()
    version = versions[-1] if which == "newest" else versions[0]
    return Blender(version, blender_python(version))


@functools.lru_cache(maxsize=None)
def built_zip() -> str:
    """Build the extension zip (validated by Blender's tool) into a temporary folder."""
    sys.path.insert(0, ROOT)
    try:
        import build  # the repository's build.py
    finally:
        sys.path.remove(ROOT)
    out = tempfile.mkdtemp(prefix="maskfield_dist_")
    return build.build(out_dir=out, verbose=False)


def blender_env(home: str, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["BLENDER_USER_RESOURCES"] = os.path.join(home, "blender user")
    env["XDG_CACHE_HOME"] = os.path.join(home, "cache")
    env["XDG_CONFIG_HOME"] = os.path.join(home, "config")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # a crash inside Blender (a signal, no Python error) then leaves the Python stack of every
    # thread on stderr, and stdout is not lost in a buffer
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # EEVEE compiles its shaders through Mesa here (software GL): kept between runs, its second
    # render of the same scene takes seconds instead of minutes
    if "MESA_SHADER_CACHE_DIR" not in env:
        env["MESA_SHADER_CACHE_DIR"] = os.path.join(ROOT, ".gl", "mesa-shader-cache")
        os.makedirs(env["MESA_SHADER_CACHE_DIR"], exist_ok=True)  # Mesa makes only the last folder
    env.pop("PYTHONPATH", None)
    if extra:
        env.update(extra)
    return env


def run_driver(script: str, *args: str, home: str, timeout: float = 300, extra_env: dict | None = None,
               python: str | None = None) -> dict:
    """Run tests/blender/<script> with ``python`` (default: this one, the environment's bpy);
    returns {"results": {...}, "times": {...}, "stdout": ..., "stderr": ...}.

    Blender itself (not the add-on's Python) has crashed with a signal once in several dozen
    runs of the same driver, not again when rerun. A run killed by a signal is therefore run once
    more from the same starting ``home`` (saved before the first run), with a warning that
    carries the crash's Python stack (faulthandler); a crash that comes back fails the test.
    """
    cmd = [python or sys.executable, os.path.join(HERE, script), *args]
    saved = _save_folder(home)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=blender_env(home, extra_env), cwd=ROOT)
        if proc.returncode < 0 and saved is not None:
            warnings.warn(f"driver {script} was killed by signal {-proc.returncode}; running it once more.\n"
                          f"stdout:\n{proc.stdout[-1500:]}\nstderr:\n{proc.stderr[-4000:]}", DriverCrashWarning)
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(saved, home, symlinks=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=blender_env(home, extra_env), cwd=ROOT)
    finally:
        if saved is not None:
            shutil.rmtree(os.path.dirname(saved), ignore_errors=True)
    return _driver_results(script, proc)


class DriverCrashWarning(UserWarning):
    """A Blender driver died by a signal and was run again."""


def _save_folder(home: str) -> str | None:
    """A copy of ``home`` as it is before a driver runs (None if it cannot be copied)."""
    keep = tempfile.mkdtemp(prefix="maskfield_home_")
    copy = os.path.join(keep, "home")
    try:
        if os.path.isdir(home):
            shutil.copytree(home, copy, symlinks=True)
        else:
            os.makedirs(copy)
    except OSError:
        shutil.rmtree(keep, ignore_errors=True)
        return None
    return copy


def _driver_results(script: str, proc: subprocess.CompletedProcess) -> dict:
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            data["stdout"] = proc.stdout[-4000:]
            data["stderr"] = proc.stderr[-4000:]
            return data
    raise AssertionError(f"driver {script} printed no results (exit {proc.returncode}).\n"
                         f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")


def assert_check(data: dict, name: str) -> None:
    res = data["results"].get(name)
    assert res is not None, f"check {name!r} did not run; stderr:\n{data.get('stderr', '')[-3000:]}"
    assert res["ok"], f"{name}: {res['detail']}"
