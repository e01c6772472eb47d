# SPDX-License-Identifier: GPL-3.0-or-later
"""Build a synthetic tabletop of named objects in Blender and render it into a scene folder.

    python tools/make_tabletop.py --out DIR [--views 40] [--resolution 128] [--seed 0]

Run it with a Python that has the ``bpy`` module (the project's venv), or inside Blender
(``blender -b -P tools/make_tabletop.py -- --out DIR``). The rendering is the add-on's own
``addon.scene_render`` code, so the folder has exactly the form the add-on writes:
images, ``transforms.json``, ``labels/`` (object-index pass + ``objects.json``) and
``points.ply``. The same seed gives the same scene, cameras and points.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from addon import scene_render  # noqa: E402

# name, primitive, linear base colour, size
OBJECTS = [
    ("red mug", "cylinder", (0.70, 0.03, 0.02), 0.34),
    ("blue box", "cube", (0.02, 0.08, 0.75), 0.40),
    ("green ball", "sphere", (0.05, 0.55, 0.06), 0.40),
    ("yellow cone", "cone", (0.85, 0.65, 0.02), 0.42),
    ("purple torus", "torus", (0.35, 0.04, 0.55), 0.48),
]
TABLE_COLOR = (0.45, 0.28, 0.15)


def _material(name: str, color) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    tree = mat.node_tree
    if tree is None:  # Blender < 5: materials start without nodes
        mat.use_nodes = True
        tree = mat.node_tree
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.6
    mat.diffuse_color = (*color, 1.0)
    return mat


def _mesh(kind: str, name: str, size: float):
    import bmesh

    bm = bmesh.new()
    if kind == "cube":
        bmesh.ops.create_cube(bm, size=size)
        bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, size / 2))
    elif kind == "cylinder":  # a mug: open-topped cylinder with a bottom
        h = size * 1.3
        bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=24,
                              radius1=size / 2, radius2=size / 2, depth=h)
        bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, h / 2))
    elif kind == "sphere":  # bmesh.ops.create_uvsphere's face order changes from run to run
        _uv_sphere(bm, radius=size / 2, segments=24, rings=12)
        bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, size / 2))
    elif kind == "cone":
        bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=24,
                              radius1=size / 2, radius2=0.0, depth=size * 1.2)
        bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, size * 0.6))
    elif kind == "torus":
        _torus(bm, major=size * 0.34, minor=size * 0.15, seg_major=32, seg_minor=12)
        bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, size * 0.15))
    elif kind == "table":
        bmesh.ops.create_cube(bm, size=1.0)
        bmesh.ops.scale(bm, verts=bm.verts, vec=(size, size * 0.75, 0.08))
        bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, -0.04))
    else:  # pragma: no cover
        raise ValueError(kind)
    me = bpy.data.meshes.new(name)
    bm.to_mesh(me)
    bm.free()
    for p in me.polygons:
        p.use_smooth = kind in ("sphere", "torus")
    return me


def _uv_sphere(bm, radius: float, segments: int, rings: int) -> None:
    top = bm.verts.new((0.0, 0.0, radius))
    bottom = bm.verts.new((0.0, 0.0, -radius))
    grid = []
    for r in range(1, rings):
        theta = math.pi * r / rings
        z, rr = radius * math.cos(theta), radius * math.sin(theta)
        grid.append([bm.verts.new((rr * math.cos(2 * math.pi * i / segments),
                                   rr * math.sin(2 * math.pi * i / segments), z)) for i in range(segments)])
    for i in range(segments):
        j = (i + 1) % segments
        bm.faces.new((top, grid[0][i], grid[0][j]))
        for r in range(rings - 2):
            bm.faces.new((grid[r][i], grid[r + 1][i], grid[r + 1][j], grid[r][j]))
        bm.faces.new((grid[-1][j], grid[-1][i], bottom))


def _torus(bm, major: float, minor: float, seg_major: int, seg_minor: int) -> None:
    verts = []
    for i in range(seg_major):
        u = 2 * math.pi * i / seg_major
        ring = []
        for j in range(seg_minor):
            v = 2 * math.pi * j / seg_minor
            r = major + minor * math.cos(v)
            ring.append(bm.verts.new((r * math.cos(u), r * math.sin(u), minor * math.sin(v))))
        verts.append(ring)
    for i in range(seg_major):
        for j in range(seg_minor):
            a = verts[i][j]
            b = verts[(i + 1) % seg_major][j]
            c = verts[(i + 1) % seg_major][(j + 1) % seg_minor]
            d = verts[i][(j + 1) % seg_minor]
            bm.faces.new((a, b, c, d))


def build_tabletop(seed: int = 0, scene: bpy.types.Scene | None = None) -> list[bpy.types.Object]:
    """Add the tabletop objects (and lights) to ``scene``; returns the objects to render."""
    scene = scene or bpy.context.scene
    rng = np.random.default_rng(seed)
    coll = scene.collection
    objs = []
    table = bpy.data.objects.new("table", _mesh("table", "table", 2.0))
    table.data.materials.append(_material("table wood", TABLE_COLOR))
    coll.objects.link(table)
    objs.append(table)
    # place the objects on a jittered ring so that none overlap
    n = len(OBJECTS)
    order = rng.permutation(n)
    angle0 = rng.uniform(0, 2 * math.pi)
    for k, idx in enumerate(order):
        name, kind, color, size = OBJECTS[idx]
        size = size * float(rng.uniform(0.85, 1.15))
        a = angle0 + 2 * math.pi * k / n + float(rng.uniform(-0.2, 0.2))
        r = float(rng.uniform(0.48, 0.58))
        ob = bpy.data.objects.new(name, _mesh(kind, name, size))
        ob.data.materials.append(_material(name, color))
        ob.location = (r * math.cos(a), r * math.sin(a) * 0.75, 0.0)
        ob.rotation_euler = (0.0, 0.0, float(rng.uniform(0, 2 * math.pi)))
        coll.objects.link(ob)
        objs.append(ob)
    # lights: a key area light and a sun, plus a grey world
    key = bpy.data.lights.new("key light", "AREA")
    key.energy = 180.0
    key.size = 2.0
    key_ob = bpy.data.objects.new("key light", key)
    key_ob.location = (1.5, -1.5, 3.0)
    key_ob.rotation_euler = (math.radians(35), 0.0, math.radians(45))
    coll.objects.link(key_ob)
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = 2.0
    sun_ob = bpy.data.objects.new("sun", sun)
    sun_ob.rotation_euler = (math.radians(50), math.radians(-20), math.radians(-30))
    coll.objects.link(sun_ob)
    world = scene_render.grey_world("tabletop world", 0.35, 0.8)
    scene.world = world
    return objs


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="scene folder to write")
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--engine", default="CYCLES", choices=scene_render.ENGINES)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--layout", default="HEMISPHERE", choices=scene_render.LAYOUTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-blend", help="also save the built scene as this .blend file")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    # an empty file: the startup file's cube, camera and light would otherwise ride along
    # into the saved .blend (in a second scene that opens first)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "tabletop"
    objs = build_tabletop(args.seed, scene)
    settings = scene_render.RenderSettings(
        views=args.views, resolution=args.resolution, samples=args.samples, engine=args.engine, points=args.points,
        layout=args.layout, seed=args.seed, extra={"generator": "tools/make_tabletop.py"})

    summary = render_folder(objs, scene, settings, args)
    if not args.quiet:
        print(f"wrote {summary['views']} views of {len(summary['objects'])} objects to {summary['folder']} "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def render_folder(objs, scene, settings, args) -> dict:
    """Render the built scene into ``args.out`` (progress every 10 views unless ``args.quiet``),
    save it as ``args.save_blend`` if asked; the scene folder's summary."""
    def progress(done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 10 == 0):
            print(f"rendered {done}/{total} views", file=sys.stderr, flush=True)

    summary = scene_render.render_scene_folder(objs, args.out, settings, scene=scene, progress=progress)
    if args.save_blend:
        bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(args.save_blend), copy=True)
    return summary


if __name__ == "__main__":
    sys.exit(main())
