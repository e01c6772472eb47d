# SPDX-License-Identifier: GPL-3.0-or-later
"""Driver: install the built extension zip with Blender's own operator, enable, disable, re-enable.

    python tests/blender/drv_install.py ZIP
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import check, section  # noqa: E402

import bpy  # noqa: E402


def main() -> None:
    zip_path = sys.argv[1]
    with section("install"):
        res = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                       enable_on_install=True)
        check("install", res == {"FINISHED"}, res)
        folder = os.path.join(os.environ["BLENDER_USER_RESOURCES"], "extensions", "user_default", "maskfield")
        check("installed_files", os.path.isfile(os.path.join(folder, "__init__.py"))
              and os.path.isfile(os.path.join(folder, "blender_manifest.toml"))
              and os.path.isfile(os.path.join(folder, "backend", "pyproject.toml"))
              and os.path.isfile(os.path.join(folder, "backend", "maskfield", "events.py")),
              sorted(os.listdir(folder)) if os.path.isdir(folder) else "missing")
    with section("enabled"):
        check("enabled", common.MODULE in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys()))
        ops = ("train", "render_scene", "segment", "prompt_add", "prompt_remove", "import_run", "export_segments",
               "clear_results", "cancel", "setup_backend", "detect_backend")
        missing = [o for o in ops if not hasattr(bpy.ops.maskfield, o)]
        check("operators", not missing, missing)
        panels = ("MASKFIELD_PT_main", "MASKFIELD_PT_settings", "MASKFIELD_PT_segment")
        check("panels", all(hasattr(bpy.types, p) for p in panels), [p for p in panels if not hasattr(bpy.types, p)])
        pt = getattr(bpy.types, "MASKFIELD_PT_main", None)
        check("sidebar_tab", pt is not None and pt.bl_category == "MaskField" and pt.bl_region_type == "UI"
              and pt.bl_space_type == "VIEW_3D", pt)
        check("scene_property", bpy.context.scene.maskfield.views == 40)
        prefs = bpy.context.preferences.addons[common.MODULE].preferences
        check("preferences", hasattr(prefs, "python_path") and hasattr(prefs, "weights_dir"), dir(prefs))
        mod = sys.modules[common.MODULE]
        user_dir = mod.preferences.extension_user_dir()
        check("extension_user_dir", os.path.isdir(user_dir) and user_dir.startswith(
            os.environ["BLENDER_USER_RESOURCES"]), user_dir)
        check("bundled_backend", mod.preferences.backend_source_dir() is not None
              and mod.preferences.backend_source_dir().startswith(folder), mod.preferences.backend_source_dir())
        check("no_torch_imported", "torch" not in sys.modules and "maskfield" not in sys.modules,
              [m for m in ("torch", "maskfield") if m in sys.modules])
    with section("disable_enable"):
        import addon_utils

        addon_utils.disable(common.MODULE, default_set=True)
        check("disabled_unregisters", not hasattr(bpy.types, "MASKFIELD_PT_main")
              and not hasattr(bpy.types.Scene, "maskfield"), "classes still registered")
        addon_utils.enable(common.MODULE, default_set=True)
        check("reenabled", hasattr(bpy.types, "MASKFIELD_PT_main") and bpy.context.scene.maskfield.views == 40)
    common.finish()


if __name__ == "__main__":
    main()
