# SPDX-License-Identifier: GPL-3.0-or-later
"""The "MaskField" tab of the 3D viewport's sidebar (N panel)."""
from __future__ import annotations

import bpy

from . import backend_client, preferences, scene_render
from .backend_client import BackendError
from .operators import mf
from .status import STATUS, wrap

WRAP = 42


class MASKFIELD_UL_prompts(bpy.types.UIList):
    bl_idname = "MASKFIELD_UL_prompts"

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        row.prop(item, "text", text="", emboss=False, icon="VIEWZOOM")
        sub = row.row(align=True)
        sub.scale_x = 0.8
        sub.prop(item, "granularity", text="")


def _draw_lines(layout, text: str, icon: str = "NONE", limit: int = 12) -> None:
    for i, line in enumerate(wrap(text, WRAP)[:limit]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


class MASKFIELD_PT_main(bpy.types.Panel):
    bl_idname = "MASKFIELD_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MaskField"
    bl_label = "MaskField"

    def draw(self, context):
        layout = self.layout
        s = mf(context)
        # backend
        try:
            preferences.resolve_python(context)
            backend_ok = True
        except BackendError:
            backend_ok = False
        if not backend_ok:
            box = layout.box()
            _draw_lines(box, "No backend set up yet.", icon="ERROR")
            box.operator("maskfield.open_preferences", text="Set up backend...", icon="PREFERENCES")

        # progress or last message
        prog = STATUS.progress()
        if prog is not None:
            text, frac = prog
            box = layout.box()
            if hasattr(box, "progress"):
                box.progress(factor=frac, type="BAR", text=text)
            else:  # pragma: no cover - Blender < 4.0
                box.label(text=f"{text} ({frac * 100:.0f}%)")
            job = backend_client.active_job()
            if job is not None and job.message:
                box.label(text=job.message[:60])
            box.operator("maskfield.cancel", icon="CANCEL")
        if STATUS.error:
            box = layout.box()
            box.alert = True
            _draw_lines(box, STATUS.error, icon="ERROR")
        elif STATUS.info:
            _draw_lines(layout.box(), STATUS.info, icon="INFO", limit=6)
            for w in STATUS.warnings[:3]:
                _draw_lines(layout, w, icon="ERROR", limit=3)
            if len(STATUS.warnings) > 3:
                layout.label(text=f"and {len(STATUS.warnings) - 3} more warning(s) in the system console")

        # source
        col = layout.column()
        col.prop(s, "source", text="")
        if s.source == "OBJECTS":
            n = sum(1 for ob in context.selected_objects if ob.type == "MESH")
            k = sum(1 for ob in context.selected_objects if scene_render.is_collection_instance(ob))
            col.label(text=f"{n} mesh object(s)" + (f", {k} collection instance(s)" if k else "") + " selected",
                      icon="RESTRICT_SELECT_OFF")
        else:
            col.prop(s, "scene_dir", text="Photos")
            if s.source == "SPLAT":
                col.prop(s, "splat_path", text="Gaussians")
        col.prop(s, "run_dir", text="Run")
        busy = STATUS.busy
        row = col.row()
        row.scale_y = 1.4
        row.enabled = not busy and backend_ok
        row.operator("maskfield.train", icon="PLAY")


class MASKFIELD_PT_settings(bpy.types.Panel):
    bl_idname = "MASKFIELD_PT_settings"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MaskField"
    bl_label = "Settings"
    bl_parent_id = "MASKFIELD_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        s = mf(context)
        col = layout.column()
        if s.source == "OBJECTS":
            col.prop(s, "views")
            col.prop(s, "resolution")
            col.prop(s, "engine")
            col.prop(s, "samples")
            col.prop(s, "layout")
            if s.layout == "WALK":
                col.prop(s, "walk_side")
            col.prop(s, "seed_points")
        else:
            col.prop(s, "photo_size")
        col.prop(s, "iterations")
        col.prop(s, "field_iterations")
        col.prop(s, "device")
        col.prop(s, "import_after_train")
        col.operator("maskfield.render_scene", icon="RENDER_STILL")


class MASKFIELD_PT_segment(bpy.types.Panel):
    bl_idname = "MASKFIELD_PT_segment"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MaskField"
    bl_label = "Segment"
    bl_parent_id = "MASKFIELD_PT_main"

    def draw(self, context):
        layout = self.layout
        s = mf(context)
        row = layout.row()
        row.template_list(MASKFIELD_UL_prompts.bl_idname, "", s, "prompts", s, "prompt_index", rows=3)
        col = row.column(align=True)
        col.operator("maskfield.prompt_add", icon="ADD", text="")
        col.operator("maskfield.prompt_remove", icon="REMOVE", text="")
        layout.prop(s, "mode", expand=True)
        if s.mode == "FACES" and s.source != "OBJECTS":
            layout.label(text="Photo source: a mesh from the Gaussians", icon="MESH_DATA")
        elif s.mode in ("FACES", "POINTS"):
            layout.prop(s, "split_in_place")
        row = layout.row(align=True)
        row.prop(s, "use_threshold", text="")
        sub = row.row()
        sub.enabled = s.use_threshold
        sub.prop(s, "threshold")
        row = layout.row()
        row.scale_y = 1.4
        row.enabled = not STATUS.busy
        row.operator("maskfield.segment", icon="VIEWZOOM")
        row = layout.row(align=True)
        row.enabled = not STATUS.busy
        row.operator("maskfield.select_at_cursor", icon="PIVOT_CURSOR")
        row.prop(s, "cursor_granularity", text="")
        layout.prop(s, "export_supersplat")
        row = layout.row(align=True)
        row.operator("maskfield.import_run", icon="OUTLINER_OB_POINTCLOUD")
        row.operator("maskfield.export_segments", icon="EXPORT", text="Export")
        layout.operator("maskfield.clear_results", icon="TRASH")


classes = (MASKFIELD_UL_prompts, MASKFIELD_PT_main, MASKFIELD_PT_settings, MASKFIELD_PT_segment)
