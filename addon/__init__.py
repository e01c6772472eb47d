# SPDX-License-Identifier: GPL-3.0-or-later
"""MaskField for Blender: segment 3D scenes and captures by text.

The extension talks to the MaskField backend (PyTorch, its own Python environment) only
through a subprocess and files; it never imports torch or the backend package. See the
sidebar tab "MaskField" in the 3D viewport, and Preferences > Add-ons > MaskField.
"""
from __future__ import annotations

import bpy

from . import backend_client, import_export, operators, panels, preferences, properties, scene_render, status

_modules_with_classes = (preferences, properties, operators, panels)


def register() -> None:
    for module in _modules_with_classes:
        for cls in module.classes:
            bpy.utils.register_class(cls)
    properties.register()
    status.register()
    backend_client.register()


def unregister() -> None:
    backend_client.unregister()
    status.unregister()
    properties.unregister()
    for module in reversed(_modules_with_classes):
        for cls in reversed(module.classes):
            bpy.utils.unregister_class(cls)


__all__ = ["register", "unregister", "backend_client", "import_export", "operators", "panels", "preferences",
           "properties", "scene_render", "status"]
