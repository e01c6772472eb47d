# SPDX-License-Identifier: GPL-3.0-or-later
"""Render one view of a few flat-coloured objects twice from the same pose, with Cycles'
equidistant fisheye and with a pinhole, as a capture with a fisheye lens would be taken:

    python render_lenses.py OUT_DIR [SIZE] [FISHEYE_FOV_DEGREES] [PINHOLE_FOCAL_PX]

OUT_DIR gets images/fisheye.png (square, SIZE px), images/pinhole.png and lenses.json (the
pose in OpenGL axes, Cycles' fisheye field of view). The test writes the camera files: this
checks the loader's fisheye model against Blender's own, not against itself."""
from __future__ import annotations

import json
import math
import os
import sys

import bpy

out, size = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 96
fov = math.radians(float(sys.argv[3])) if len(sys.argv) > 3 else math.radians(160)
pinhole_f = float(sys.argv[4]) if len(sys.argv) > 4 else size / 2 / (fov / 2)

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 16
scene.cycles.use_denoising = False
scene.render.resolution_x = scene.render.resolution_y = size
scene.render.resolution_percentage = 100
scene.render.film_transparent = False
scene.view_settings.view_transform = "Standard"
scene.render.image_settings.file_format = "PNG"


def emitting(name, rgb):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    emit = nodes.new("ShaderNodeEmission")
    emit.inputs["Color"].default_value = (*rgb, 1.0)
    out_node = nodes.new("ShaderNodeOutputMaterial")
    mat.node_tree.links.new(emit.outputs[0], out_node.inputs[0])
    return mat


# a ring of coloured boxes around the camera's axis at several angles, over a grey world
colours = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.1, 0.2, 0.9), (0.9, 0.8, 0.1), (0.8, 0.2, 0.8), (0.1, 0.8, 0.8)]
for k, rgb in enumerate(colours * 2):
    ring, a = (0.6, 1.6)[k // 6], 2 * math.pi * k / 6 + (0.4 if k >= 6 else 0.0)
    bpy.ops.mesh.primitive_cube_add(size=0.35 if k < 6 else 0.55, location=(ring * math.cos(a), ring * math.sin(a), 0))
    bpy.context.object.rotation_euler = (0.3 * k, 0.2 * k, 0.1 * k)
    bpy.context.object.data.materials.append(emitting(f"c{k}", rgb))
world = bpy.data.worlds.new("grey")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs[0].default_value = (0.3, 0.3, 0.3, 1.0)
scene.world = world

cam_data = bpy.data.cameras.new("lens")
cam = bpy.data.objects.new("lens", cam_data)
scene.collection.objects.link(cam)
cam.location = (0.2, -0.3, 2.0)
cam.rotation_euler = (math.radians(8), math.radians(-5), math.radians(20))
scene.camera = cam
bpy.context.view_layer.update()
os.makedirs(os.path.join(out, "images"), exist_ok=True)

cam_data.type = "PANO"
if hasattr(cam_data, "panorama_type"):  # Blender 4.x+: on the camera
    cam_data.panorama_type = "FISHEYE_EQUIDISTANT"
    cam_data.fisheye_fov = fov
else:  # older: Cycles' camera settings
    cam_data.cycles.panorama_type = "FISHEYE_EQUIDISTANT"
    cam_data.cycles.fisheye_fov = fov
scene.render.filepath = os.path.join(out, "images", "fisheye.png")
bpy.ops.render.render(write_still=True)

cam_data.type = "PERSP"
cam_data.sensor_fit = "HORIZONTAL"
cam_data.sensor_width = 36.0
cam_data.lens = pinhole_f * 36.0 / size
scene.render.filepath = os.path.join(out, "images", "pinhole.png")
bpy.ops.render.render(write_still=True)

with open(os.path.join(out, "lenses.json"), "w", encoding="utf-8") as fh:
    json.dump({"transform_matrix": [list(row) for row in cam.matrix_world], "fisheye_fov": fov, "size": size,
               "pinhole_focal_px": pinhole_f}, fh)
