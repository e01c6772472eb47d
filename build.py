# SPDX-License-Identifier: GPL-3.0-or-later
"""Build the Blender extension: dist/maskfield-<version>.zip, validated by Blender itself.

    python build.py [--out-dir dist] [--blender-ext PATH] [--no-validate]

The zip holds the add-on at its root (``__init__.py`` and ``blender_manifest.toml``, as
Blender expects) and the backend source under ``backend/`` (``backend/pyproject.toml`` and
``backend/maskfield/``), which the add-on's "Set up backend" button pip-installs into its
own environment. The zip is made by Blender's extension tool (``blender_ext.py build``,
which honours ``[build] paths_exclude_pattern`` of the manifest) and then checked with
``blender_ext.py validate``; any problem stops the build with a non-zero exit.

``blender_ext.py`` is looked up in this order: ``--blender-ext``, ``$BLENDER_EXT``, the
``bpy`` module of this Python (``bpy/<ver>/scripts/addons_core/bl_pkg/cli``), and a
``blender`` executable on PATH (``blender --command extension ...``).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    tomllib = None  # type: ignore[assignment]

ROOT = os.path.dirname(os.path.abspath(__file__))
ADDON_DIR = os.path.join(ROOT, "addon")
BACKEND_DIR = os.path.join(ROOT, "backend")
MANIFEST = os.path.join(ROOT, "blender_manifest.toml")
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")


class BuildError(RuntimeError):
    pass


def read_manifest(path: str = MANIFEST) -> dict:
    with open(path, "rb") as fh:
        data = fh.read()
    if tomllib is not None:
        return tomllib.loads(data.decode("utf-8"))
    out = {}  # minimal fallback: top-level key = "value" lines
    for line in data.decode("utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    return out


def _bpy_dir() -> str | None:
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def find_blender_ext(explicit: str | None = None) -> list[str]:
    """The command prefix that runs Blender's extension tool."""
    for cand in (explicit, os.environ.get("BLENDER_EXT")):
        if cand:
            if not os.path.isfile(cand):
                raise BuildError(f"blender_ext.py not found at {cand}")
            return [sys.executable, cand]
    bpy_dir = _bpy_dir()
    if bpy_dir:
        hits = sorted(glob.glob(os.path.join(bpy_dir, "*", "scripts", "addons_core", "bl_pkg", "cli",
                                             "blender_ext.py")))
        if hits:
            return [sys.executable, hits[-1]]
    blender = shutil.which("blender")
    if blender:
        return [blender, "--factory-startup", "--command", "extension"]
    raise BuildError("cannot find Blender's extension tool: install the bpy module "
                     "(pip install bpy), put blender on PATH, or pass --blender-ext PATH")


def find_valid_tags() -> str | None:
    bpy_dir = _bpy_dir()
    if not bpy_dir:
        return None
    hits = sorted(glob.glob(os.path.join(bpy_dir, "*", "scripts", "modules", "_bpy_internal", "extensions",
                                         "tags.py")))
    return hits[-1] if hits else None


def _copy_tree(src: str, dst: str) -> None:
    def ignore(_dir, names):
        return [n for n in names if n in SKIP_NAMES or n.endswith(SKIP_SUFFIXES)]

    shutil.copytree(src, dst, ignore=ignore)


def stage(stage_dir: str) -> None:
    """Lay out the extension's files: add-on at the root, backend source under backend/."""
    if not os.path.isfile(os.path.join(ADDON_DIR, "__init__.py")):
        raise BuildError(f"add-on package missing: {ADDON_DIR}/__init__.py")
    if not os.path.isfile(os.path.join(BACKEND_DIR, "pyproject.toml")):
        raise BuildError(f"backend missing: {BACKEND_DIR}/pyproject.toml")
    for name in sorted(os.listdir(ADDON_DIR)):
        if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES):
            continue
        src = os.path.join(ADDON_DIR, name)
        if os.path.isdir(src):
            _copy_tree(src, os.path.join(stage_dir, name))
        else:
            shutil.copy2(src, os.path.join(stage_dir, name))
    if os.path.exists(os.path.join(stage_dir, "backend")):
        raise BuildError("addon/ must not contain a 'backend' entry: that name holds the bundled backend")
    shutil.copy2(MANIFEST, os.path.join(stage_dir, "blender_manifest.toml"))
    backend_dst = os.path.join(stage_dir, "backend")
    os.makedirs(backend_dst)
    shutil.copy2(os.path.join(BACKEND_DIR, "pyproject.toml"), backend_dst)
    for extra in ("README.md", "LICENSE"):
        for base in (BACKEND_DIR, ROOT):
            path = os.path.join(base, extra)
            if os.path.isfile(path):
                shutil.copy2(path, os.path.join(backend_dst, extra))
                if extra == "README.md":
                    copy_linked_files(path, backend_dst)
                break
    _copy_tree(os.path.join(BACKEND_DIR, "maskfield"), os.path.join(backend_dst, "maskfield"))
    write_constraints(os.path.join(backend_dst, "constraints.txt"))
    license_path = os.path.join(ROOT, "LICENSE")
    if os.path.isfile(license_path):
        shutil.copy2(license_path, os.path.join(stage_dir, "LICENSE"))


def readme_links(readme: str) -> list[str]:
    """The relative paths a Markdown file links to or shows (``[text](docs/x.md)``,
    ``![alt](docs/y.png)``), without anchors; web addresses and in-page anchors left out."""
    with open(readme, encoding="utf-8") as fh:
        text = fh.read()
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        target = target.split("#", 1)[0]
        if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) and target not in links:
            links.append(target)
    return links


def copy_linked_files(readme: str, dst_dir: str) -> None:
    """Copy what the README links to (docs, pictures) beside its copy, so its links resolve in
    the zip as they do in the repository."""
    base = os.path.dirname(os.path.abspath(readme))
    for target in readme_links(readme):
        src = os.path.normpath(os.path.join(base, target))
        if os.path.commonpath([src, base]) != base or not os.path.isfile(src):
            continue  # outside the project, or a folder: nothing to bundle
        out = os.path.join(dst_dir, os.path.relpath(src, base))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(src, out)


def _requirement_name(text: str) -> str:
    return re.split(r"[\s<>=!~;\[]", text.strip(), maxsplit=1)[0].lower().replace("_", "-")


def write_constraints(path: str) -> list[str]:
    """backend/constraints.txt in the zip: the project's pinned versions (requirements/) of the
    backend's dependencies, which 'Set up backend' installs by (PyTorch above all: never a
    bare ``torch``, which would take whatever is newest)."""
    with open(os.path.join(BACKEND_DIR, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"] if tomllib is not None else {}
    wanted = {"torch", "torchvision"} | {_requirement_name(d) for d in project.get("dependencies", [])}
    for extra in project.get("optional-dependencies", {}).values():
        wanted |= {_requirement_name(d) for d in extra}
    pins = []
    for name in ("torch.txt", "stack.txt"):
        with open(os.path.join(ROOT, "requirements", name), encoding="utf-8") as fh:
            for line in fh:
                line = line.split("#", 1)[0].strip()
                if "==" in line and _requirement_name(line) in wanted and line not in pins:
                    pins.append(line)
    if not any(_requirement_name(p) == "torch" for p in pins):
        raise BuildError("requirements/torch.txt pins no torch version: the set-up would install any")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# Versions the add-on's 'Set up backend' installs (from the project's requirements/)\n")
        fh.write("".join(p + "\n" for p in pins))
    return pins


def run_tool(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0 or "Error" in out.split("\n", 1)[0] or "\nError" in out:
        raise BuildError(f"{' '.join(cmd[-3:])} failed (exit {proc.returncode}):\n{out.strip()}")
    return out


def build(out_dir: str | None = None, blender_ext: str | None = None, validate: bool = True,
          verbose: bool = True) -> str:
    manifest = read_manifest()
    ext_id, version = manifest.get("id"), manifest.get("version")
    if not ext_id or not version:
        raise BuildError("blender_manifest.toml needs id and version")
    out_dir = os.path.abspath(out_dir or os.path.join(ROOT, "dist"))
    os.makedirs(out_dir, exist_ok=True)
    out_zip = os.path.join(out_dir, f"{ext_id}-{version}.zip")
    tool = find_blender_ext(blender_ext)
    tags = find_valid_tags()
    tag_args = [f"--valid-tags={tags}"] if tags and tool[0] == sys.executable else []
    with tempfile.TemporaryDirectory(prefix="maskfield_build_") as tmp:
        stage_dir = os.path.join(tmp, ext_id)
        os.makedirs(stage_dir)
        stage(stage_dir)
        if os.path.exists(out_zip):
            os.remove(out_zip)
        out = run_tool(tool + ["build", "--source-dir", stage_dir, "--output-filepath", out_zip] + tag_args)
        if verbose:
            print(out.strip())
    if not os.path.isfile(out_zip):
        raise BuildError(f"Blender's build wrote no {out_zip}")
    with zipfile.ZipFile(out_zip) as zf:
        names = set(zf.namelist())
    for required in ("__init__.py", "blender_manifest.toml", "backend/pyproject.toml",
                     "backend/maskfield/__init__.py"):
        if required not in names:
            raise BuildError(f"{out_zip} lacks {required}")
    if validate:
        out = run_tool(tool + ["validate", out_zip] + tag_args)
        if verbose:
            print(out.strip())
    return out_zip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build and validate the MaskField Blender extension zip.")
    ap.add_argument("--out-dir", default=None, help="output folder (default: dist/)")
    ap.add_argument("--blender-ext", default=None, help="path of Blender's blender_ext.py")
    ap.add_argument("--no-validate", action="store_true", help="skip Blender's validation")
    args = ap.parse_args(argv)
    try:
        path = build(args.out_dir, args.blender_ext, validate=not args.no_validate)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
