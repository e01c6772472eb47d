# SPDX-License-Identifier: GPL-3.0-or-later
"""The extension zip: built by build.py, validated by Blender's own tool, installed and enabled
with Blender's extension operator (in a Blender subprocess with temporary user folders)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402
from harness import blender  # noqa: E402,F401  (the Blender-version matrix fixture)

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")

try:
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None  # type: ignore[assignment]


def _build_module():
    sys.path.insert(0, harness.ROOT)
    try:
        import build
    finally:
        sys.path.remove(harness.ROOT)
    return build


@pytest.mark.skipif(tomllib is None, reason="needs Python 3.11")
def test_manifest_fields():
    with open(os.path.join(harness.ROOT, "blender_manifest.toml"), "rb") as fh:
        m = tomllib.load(fh)
    assert m["schema_version"] == "1.0.0"
    assert m["id"] == "maskfield" and m["name"] == "MaskField" and m["type"] == "add-on"
    assert m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(m["permissions"]) == {"network", "files"}
    assert len(m["tagline"]) <= 64


def test_build_script_makes_valid_zip(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(harness.ROOT, "build.py"), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zips = list(tmp_path.glob("maskfield-*.zip"))
    assert len(zips) == 1, list(tmp_path.iterdir())
    with zipfile.ZipFile(zips[0]) as zf:
        names = set(zf.namelist())
    # the add-on at the root, as Blender expects
    for required in ("__init__.py", "blender_manifest.toml", "backend_client.py", "scene_render.py",
                     "operators.py", "panels.py", "preferences.py", "properties.py", "import_export.py"):
        assert required in names, required
    # the backend source, for 'Set up backend'
    assert "backend/pyproject.toml" in names
    assert "backend/maskfield/__init__.py" in names and "backend/maskfield/events.py" in names
    backend_py = {n for n in names if n.startswith("backend/maskfield/") and n.endswith(".py")}
    here = {os.path.relpath(os.path.join(d, f), harness.ROOT).replace(os.sep, "/")
            for d, _, fs in os.walk(os.path.join(harness.ROOT, "backend", "maskfield")) for f in fs
            if f.endswith(".py") and "__pycache__" not in d}
    assert here <= backend_py, sorted(here - backend_py)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "Success" in proc.stdout or "valid" in proc.stdout.lower(), proc.stdout
    # the README's links (docs, pictures) resolve inside the zip as in the repository
    build = _build_module()
    links = build.readme_links(os.path.join(harness.ROOT, "README.md"))
    assert "docs/measurements.md" in links and "docs/contracts.md" in links
    assert {f"backend/{link}" for link in links} <= names, sorted({f"backend/{link}" for link in links} - names)


def test_validation_failure_is_loud(tmp_path):
    build = _build_module()
    good = harness.built_zip()
    bad = tmp_path / "maskfield-bad.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "blender_manifest.toml":
                data = data.replace(b'blender_version_min = "4.2.0"', b'blender_version_min = "four"')
            dst.writestr(item, data)
    with pytest.raises(build.BuildError):
        build.run_tool(build.find_blender_ext() + ["validate", str(bad)])
    # and the good one passes the same check
    build.run_tool(build.find_blender_ext() + ["validate", good])


def test_each_blender_validates_the_zip(blender):
    """The zip built once passes the validator that ships with every Blender of the matrix."""
    tool = blender.blender_ext()
    assert f"{os.sep}{blender.version}{os.sep}scripts{os.sep}" in tool, tool
    proc = subprocess.run([blender.python, tool, "validate", harness.built_zip()], capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Success" in out and "Error" not in out, out


def test_install_and_enable_in_blender(blender, tmp_path):
    data = blender.run_driver("drv_install.py", harness.built_zip(), home=str(tmp_path), timeout=120)
    for name in ("install", "installed_files", "enabled", "operators", "panels", "sidebar_tab", "scene_property",
                 "preferences", "extension_user_dir", "bundled_backend", "no_torch_imported",
                 "disabled_unregisters", "reenabled"):
        harness.assert_check(data, name)
    assert all(v["ok"] for v in data["results"].values()), data["results"]
    shutil.rmtree(tmp_path, ignore_errors=True)
