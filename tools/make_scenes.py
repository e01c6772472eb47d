# SPDX-License-Identifier: GPL-3.0-or-later
"""Build benchmark scenes that look like users' scenes and render them into scene folders.

    python tools/make_scenes.py --scene bookshelf --out DIR [--views 48] [--resolution 200x150]
        [--holdout-views 8] [--holdout-elevation 30] [--holdout-distance 0.85] [--no-points]

Unlike the tabletop (transparent film, held-out views on the training ring), these are
rendered over the world's grey background (opaque images, as photos are), from training
cameras on two rings (20 and 40 degrees elevation) and held-out cameras *off* that
trajectory: a ring at another elevation (30 degrees) and another distance. The held-out
frames are listed in transforms.json's ``test_filenames``, so ``maskfield`` holds out exactly
those. Scenes:

- ``bookshelf``: an open shelf unit (no back, seen from both sides) with nine objects on its boards (books, a vase, a globe, a
  cone, a torus, a teapot, a small lamp);
- ``room``: a floor and two walls with furniture (table, chair, sofa, a standing lamp, a
  teapot on the table, a plant).
- ``workshop``: a concrete floor with a workbench on thin legs, a ladder of thin rungs, a tyre
  lying flat, a traffic cone, a bucket, a ball, a toolbox and a hammer on the bench (made after
  every default of the mask field was chosen on the other four, to judge them on shapes they
  never saw: rungs a few pixels thick with the floor seen between them, a dark ring).
- ``desk``: a desk on a rug, no walls (made after the defaults were tuned on the other two,
  to judge them on a scene they were not tuned on): a thin dark monitor, a flat keyboard and a
  bin both close to the world's grey, a mug, a desk lamp, an office chair.

``--layout inside`` films a scene from its middle instead (the add-on's INSIDE cameras: a
small circle at 3/4 of the scene's height, each camera looking outward at two pitches, -10 and
-30 degrees in the room, -25 and -50 in the small workshop; held out: at their mean pitch on a
circle 1.5 times as wide, nearer the walls as the rings' held-out views are nearer the scene,
at yaws of their own), as a person turning in the middle of a room; for the room, which then
gets its other two walls, and the workshop, which gets four ("walls", one object).

``--layout walk`` films a scene as a person walking past its front does (the add-on's WALK
cameras: two straight passes along the scene's width on its -Y side, at 20 and 40 degrees up
from its middle and half the rings' distance, each camera turned half way from straight ahead
toward the middle; held out: a pass at 30 degrees and 0.85 of that distance, at steps of its
own): for the kitchen (its counter against the wall), the room (its corner from the open side)
and the bookshelf.

Rendering is the add-on's own ``addon.scene_render`` code, as for the tabletop; labels are
the object-index pass (``labels/``), seed points ``points.ply`` unless ``--no-points``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import bpy  # noqa: E402  (before bmesh, which the bpy module provides)
import bmesh  # noqa: E402
import numpy as np  # noqa: E402

from addon import scene_render  # noqa: E402
from make_tabletop import _material, _mesh, render_folder  # noqa: E402  (the tabletop's parts)

SCENES = ("bookshelf", "room", "desk", "kitchen", "workshop")
# the scenes --layout inside films from their middle: the room closed by its other two walls, the
# workshop within four walls (one object); the kitchen's own wall would share a name with them
INSIDE_SCENES = ("room", "workshop")
# the scenes --layout walk films past their front (the -Y side): a counter against its wall, the
# room's corner from its open side, the shelf's open front
WALK_SCENES = ("kitchen", "room", "bookshelf")
# their training pitches, in degrees: the small workshop's things stand on its floor, so its
# cameras look further down
INSIDE_PITCHES = {"room": "-10,-30", "workshop": "-25,-50"}


def _box(name: str, size, location, color, coll, rotation_z: float = 0.0):
    """An axis-aligned box of ``size`` (x, y, z) whose bottom centre sits at ``location``."""
    me = _box_mesh(size)
    me.name = name
    return _link(name, me, location, color, coll, rotation_z)


def _link(name: str, me, location, color, coll, rotation_z: float = 0.0):
    ob = bpy.data.objects.new(name, me)
    ob.data.materials.append(_material(name, color))
    ob.location = location
    ob.rotation_euler = (0.0, 0.0, rotation_z)
    coll.objects.link(ob)
    return ob


def _join(name: str, parts):
    """One object from several (mesh, offset) parts, so an object keeps one label."""
    bm = bmesh.new()
    for me, offset in parts:
        tmp = bmesh.new()
        tmp.from_mesh(me)
        bmesh.ops.translate(tmp, verts=tmp.verts, vec=offset)
        data = bpy.data.meshes.new(name + " part")
        tmp.to_mesh(data)
        tmp.free()
        bm.from_mesh(data)
        bpy.data.meshes.remove(data)
        bpy.data.meshes.remove(me)
    me = bpy.data.meshes.new(name)
    bm.to_mesh(me)
    bm.free()
    return me


def _lamp(name: str, height: float, shade: float, coll, location, color=(0.9, 0.85, 0.6)):
    """A thin stem with a cone shade on top: a thin object, hard at the edges."""
    stem = _mesh("cylinder", name + " stem", height * 0.06)
    # _mesh's cylinder is 1.3 x its size tall: scale the stem to the lamp's height
    bm = bmesh.new()
    bm.from_mesh(stem)
    bmesh.ops.scale(bm, verts=bm.verts, vec=(1.0, 1.0, height * 0.8 / (height * 0.06 * 1.3)))
    bm.to_mesh(stem)
    bm.free()
    cone = _mesh("cone", name + " shade", shade)
    me = _join(name, [(stem, (0, 0, 0)), (cone, (0, 0, height * 0.8 - shade * 0.3))])
    return _link(name, me, location, color, coll)


def _teapot(name: str, size: float, coll, location, color=(0.75, 0.75, 0.8)):
    body = _mesh("sphere", name + " body", size)
    spout = _mesh("cone", name + " spout", size * 0.3)
    lid = _mesh("cone", name + " lid", size * 0.35)
    me = _join(name, [(body, (0, 0, 0)), (spout, (size * 0.55, 0, size * 0.25)), (lid, (0, 0, size * 0.9))])
    return _link(name, me, location, color, coll)


def build_bookshelf(scene, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    coll = scene.collection
    wood = (0.40, 0.24, 0.12)
    w, d, h, board = 2.0, 0.5, 1.6, 0.05
    parts = []
    for x in (-w / 2, w / 2 - board):  # sides
        parts.append(((board, d, h), (x + board / 2, 0, 0)))
    for z in (0.0, 0.55, 1.1, h - board):  # boards
        parts.append(((w, d, board), (0, 0, z)))
    objs = [_link("shelf", _join("shelf", [(_box_mesh(size), loc) for size, loc in parts]), (0, 0, 0), wood, coll)]
    top = [0.05, 0.6, 1.15]
    jitter = lambda: float(rng.uniform(-0.05, 0.05))  # noqa: E731
    # three books side by side on the lowest board
    for k, (name, color) in enumerate([("red book", (0.6, 0.04, 0.03)), ("blue book", (0.03, 0.1, 0.6)),
                                       ("green book", (0.05, 0.4, 0.08))]):
        objs.append(_box(name, (0.09, 0.32, 0.42 + 0.03 * k), (-0.7 + 0.11 * k + jitter() * 0.2, -0.02, top[0]),
                         color, coll))
    objs.append(_link("vase", _mesh("cylinder", "vase", 0.22), (0.1 + jitter(), -0.02, top[0]), (0.1, 0.5, 0.55), coll))
    objs.append(_link("globe", _mesh("sphere", "globe", 0.34), (0.6 + jitter(), -0.02, top[0]), (0.15, 0.3, 0.7), coll))
    objs.append(_link("yellow cone", _mesh("cone", "yellow cone", 0.3), (-0.55 + jitter(), -0.02, top[1]),
                      (0.85, 0.65, 0.02), coll))
    objs.append(_link("purple torus", _mesh("torus", "purple torus", 0.4), (0.05 + jitter(), -0.02, top[1]),
                      (0.35, 0.04, 0.55), coll))
    objs.append(_teapot("teapot", 0.26, coll, (0.6 + jitter(), -0.02, top[1])))
    objs.append(_lamp("lamp", 0.4, 0.2, coll, (-0.3 + jitter(), -0.05, top[2])))
    _lights(scene, coll, (1.5, -2.0, 3.0))
    return objs


def build_room(scene, seed: int = 0, closed: bool = False) -> list:
    """The room; ``closed`` adds its other two walls (for cameras inside it: from the rings
    they would hide the room)."""
    rng = np.random.default_rng(seed)
    coll = scene.collection
    objs = [
        _box("floor", (4.0, 4.0, 0.05), (0, 0, -0.05), (0.55, 0.5, 0.45), coll),
        _box("back wall", (4.0, 0.08, 1.6), (0, 2.0, -0.05), (0.8, 0.78, 0.7), coll),
        _box("side wall", (0.08, 4.0, 1.6), (-2.0, 0, -0.05), (0.7, 0.75, 0.8), coll),
    ]
    if closed:
        objs += [_box("front wall", (4.0, 0.08, 1.6), (0, -2.0, -0.05), (0.75, 0.7, 0.6), coll),
                 _box("window wall", (0.08, 4.0, 1.6), (2.0, 0, -0.05), (0.85, 0.82, 0.78), coll)]
    a = float(rng.uniform(-0.2, 0.2))
    # a table: top and four legs, one object
    legs = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            legs.append(((0.06, 0.06, 0.7), (sx * 0.5, sy * 0.3, 0)))
    legs.append(((1.2, 0.75, 0.05), (0, 0, 0.7)))
    objs.append(_link("table", _join("table", [(_box_mesh(s), o) for s, o in legs]),
                      (0.3, 0.2, 0), (0.4, 0.25, 0.12), coll, a))
    chair = [((0.05, 0.05, 0.4), (sx * 0.2, sy * 0.2, 0)) for sx in (-1, 1) for sy in (-1, 1)]
    chair += [((0.45, 0.45, 0.05), (0, 0, 0.4)), ((0.45, 0.05, 0.45), (0, 0.2, 0.45))]
    objs.append(_link("chair", _join("chair", [(_box_mesh(s), o) for s, o in chair]),
                      (0.3, 0.85, 0), (0.6, 0.1, 0.1), coll, math.pi + a))
    sofa = [((1.4, 0.6, 0.4), (0, 0, 0)), ((1.4, 0.15, 0.45), (0, 0.25, 0.4)),
            ((0.15, 0.6, 0.25), (-0.7, 0, 0.4)), ((0.15, 0.6, 0.25), (0.7, 0, 0.4))]
    objs.append(_link("sofa", _join("sofa", [(_box_mesh(s), o) for s, o in sofa]),
                      (-1.2, -0.6, 0), (0.1, 0.3, 0.5), coll, math.pi / 2))
    objs.append(_lamp("lamp", 1.3, 0.35, coll, (1.5, 1.5, 0)))
    objs.append(_teapot("teapot", 0.2, coll, (0.45, 0.15, 0.75)))
    plant = _join("plant", [(_mesh("cylinder", "pot", 0.25), (0, 0, 0)), (_mesh("sphere", "leaves", 0.45), (0, 0, 0.3))])
    objs.append(_link("plant", plant, (1.4, -1.2, 0), (0.1, 0.45, 0.1), coll))
    _lights(scene, coll, (2.0, -2.5, 3.5))
    return objs


def build_desk(scene, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    coll = scene.collection
    a = float(rng.uniform(-0.15, 0.15))
    objs = [_box("rug", (2.4, 1.8, 0.01), (0, 0, 0), (0.2, 0.35, 0.28), coll)]
    desk = [((0.05, 0.05, 0.72), (sx * 0.65, sy * 0.3, 0.01)) for sx in (-1, 1) for sy in (-1, 1)]
    desk.append(((1.4, 0.7, 0.04), (0, 0, 0.73)))
    objs.append(_link("desk", _join("desk", [(_box_mesh(s), o) for s, o in desk]), (0, 0.25, 0),
                      (0.55, 0.4, 0.25), coll, a))
    top = 0.77
    # a thin panel on a stand: dark, 3 cm deep
    monitor = [((0.2, 0.15, 0.01), (0, 0, 0)), ((0.04, 0.03, 0.2), (0, 0.02, 0.01)),
               ((0.62, 0.03, 0.38), (0, 0.0, 0.18))]
    objs.append(_link("monitor", _join("monitor", [(_box_mesh(s), o) for s, o in monitor]),
                      (0.0, 0.45, top), (0.04, 0.04, 0.05), coll, a))
    # flat and light grey, close to the world's colour: easy to take for background
    objs.append(_box("keyboard", (0.45, 0.15, 0.025), (float(rng.uniform(-0.05, 0.05)), 0.12, top),
                     (0.62, 0.62, 0.64), coll, a))
    objs.append(_link("mug", _mesh("cylinder", "mug", 0.09), (0.42, 0.1, top), (0.8, 0.3, 0.08), coll))
    objs.append(_lamp("desk lamp", 0.5, 0.18, coll, (-0.55, 0.45, top), color=(0.15, 0.15, 0.17)))
    chair = [((0.5, 0.5, 0.06), (0, 0, 0.45)), ((0.46, 0.05, 0.5), (0, -0.24, 0.5)),
             ((0.06, 0.06, 0.42), (0, 0, 0.03))]
    chair += [((0.55 if k == 0 else 0.05, 0.05 if k == 0 else 0.55, 0.03), (0, 0, 0.0)) for k in (0, 1)]
    objs.append(_link("office chair", _join("office chair", [(_box_mesh(s), o) for s, o in chair]),
                      (0.1, -0.45, 0.01), (0.12, 0.22, 0.5), coll, a + float(rng.uniform(-0.3, 0.3))))
    objs.append(_link("bin", _mesh("cylinder", "bin", 0.3), (0.85, -0.2, 0.01), (0.55, 0.55, 0.55), coll))
    _lights(scene, coll, (1.8, -2.2, 3.2))
    return objs


def build_kitchen(scene, seed: int = 0) -> list:
    """A kitchen counter against a wall: made after the mask field's edge band was chosen on
    the other three, to judge it on shapes it never saw (a thin bottle, a flat board, a small
    apple beside its bowl, a stool's legs)."""
    rng = np.random.default_rng(seed)
    coll = scene.collection
    a = float(rng.uniform(-0.1, 0.1))
    objs = [
        _box("floor", (2.2, 1.8, 0.02), (0, 0, -0.02), (0.72, 0.66, 0.55), coll),
        _box("wall", (2.2, 0.06, 1.4), (0, 0.75, -0.02), (0.35, 0.45, 0.5), coll),
        _box("counter", (1.8, 0.6, 0.88), (0, 0.38, 0), (0.85, 0.85, 0.82), coll),
    ]
    top = 0.88
    objs.append(_teapot("kettle", 0.18, coll, (-0.6, 0.35, top), color=(0.55, 0.1, 0.12)))
    objs.append(_box("cutting board", (0.42, 0.26, 0.02), (-0.12, 0.25, top), (0.7, 0.5, 0.25), coll,
                     a + float(rng.uniform(-0.2, 0.2))))
    objs.append(_link("bowl", _mesh("torus", "bowl", 0.26), (0.35, 0.3, top), (0.2, 0.35, 0.7), coll))
    objs.append(_link("apple", _mesh("sphere", "apple", 0.11), (0.52, 0.18, top), (0.2, 0.55, 0.05), coll))
    bottle = _join("bottle", [(_mesh("cylinder", "body", 0.09), (0, 0, 0)),
                              (_mesh("cone", "neck", 0.06), (0, 0, 0.117))])
    objs.append(_link("bottle", bottle, (0.7, 0.5, top), (0.05, 0.3, 0.12), coll))
    objs.append(_box("knife block", (0.1, 0.14, 0.22), (-0.35, 0.55, top), (0.12, 0.1, 0.08), coll, a))
    stool = [((0.04, 0.04, 0.6), (sx * 0.13, sy * 0.13, 0)) for sx in (-1, 1) for sy in (-1, 1)]
    stool.append(((0.36, 0.36, 0.05), (0, 0, 0.6)))
    objs.append(_link("stool", _join("stool", [(_box_mesh(s), o) for s, o in stool]),
                      (0.25 + float(rng.uniform(-0.1, 0.1)), -0.35, 0), (0.3, 0.2, 0.1), coll, a * 3))
    _lights(scene, coll, (1.6, -2.2, 3.0))
    return objs


def build_workshop(scene, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    coll = scene.collection
    a = float(rng.uniform(-0.15, 0.15))
    objs = [_box("floor", (2.6, 2.0, 0.02), (0, 0, -0.02), (0.38, 0.37, 0.35), coll)]
    bench = [((0.05, 0.05, 0.8), (sx * 0.55, sy * 0.22, 0)) for sx in (-1, 1) for sy in (-1, 1)]
    bench += [((1.2, 0.5, 0.05), (0, 0, 0.8)), ((1.1, 0.03, 0.03), (0, 0.22, 0.2))]
    objs.append(_link("workbench", _join("workbench", [(_box_mesh(s), o) for s, o in bench]), (-0.3, 0.45, 0),
                      (0.6, 0.45, 0.3), coll, a))
    top = 0.85
    objs.append(_box("toolbox", (0.34, 0.18, 0.16), (-0.55, 0.45, top), (0.75, 0.08, 0.06), coll, a))
    hammer = [((0.025, 0.25, 0.025), (0, 0, 0)), ((0.1, 0.035, 0.035), (0, 0.12, -0.005))]
    objs.append(_link("hammer", _join("hammer", [(_box_mesh(s), o) for s, o in hammer]),
                      (0.05, 0.35, top), (0.2, 0.2, 0.25), coll, a + float(rng.uniform(-0.5, 0.5))))
    # two rails and seven rungs, 3 cm thick: the floor shows between them
    ladder = [((0.04, 0.04, 1.5), (sx * 0.2, 0, 0)) for sx in (-1, 1)]
    ladder += [((0.4, 0.03, 0.03), (0, 0, 0.2 * (k + 1))) for k in range(7)]
    objs.append(_link("ladder", _join("ladder", [(_box_mesh(s), o) for s, o in ladder]), (0.95, 0.6, 0),
                      (0.75, 0.7, 0.65), coll, -0.4 + a))
    objs.append(_link("tyre", _mesh("torus", "tyre", 0.55), (0.75, -0.45, 0), (0.06, 0.06, 0.07), coll))
    objs.append(_link("traffic cone", _mesh("cone", "traffic cone", 0.28), (-0.9, -0.5, 0), (0.95, 0.4, 0.05), coll))
    objs.append(_link("bucket", _mesh("cylinder", "bucket", 0.26), (-0.2, -0.6, 0), (0.15, 0.35, 0.75), coll))
    objs.append(_link("ball", _mesh("sphere", "ball", 0.16), (0.2 + float(rng.uniform(-0.1, 0.1)), -0.25, 0),
                      (0.85, 0.75, 0.1), coll))
    _lights(scene, coll, (1.8, -2.4, 3.3))
    return objs


def enclose(objs: list, coll, height: float = 1.6, color=(0.8, 0.78, 0.72)) -> list:
    """``objs`` with four walls round their floor (one object, "walls"), for cameras inside."""
    floor = next(o for o in objs if o.name == "floor")
    hx, hy = floor.dimensions.x / 2, floor.dimensions.y / 2
    sides = [((2 * hx, 0.06, height), (0, sy * hy, 0)) for sy in (-1, 1)]
    sides += [((0.06, 2 * hy, height), (sx * hx, 0, 0)) for sx in (-1, 1)]
    walls = _join("walls", [(_box_mesh(size), offset) for size, offset in sides])
    return objs + [_link("walls", walls, (floor.location.x, floor.location.y, floor.location.z), color, coll)]


def _box_mesh(size):
    """A box mesh of ``size`` (x, y, z) standing on the origin."""
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.scale(bm, verts=bm.verts, vec=size)
    bmesh.ops.translate(bm, verts=bm.verts, vec=(0, 0, size[2] / 2))
    me = bpy.data.meshes.new("part")
    bm.to_mesh(me)
    bm.free()
    return me


def _lights(scene, coll, key_location) -> None:
    key = bpy.data.lights.new("key light", "AREA")
    key.energy = 300.0
    key.size = 3.0
    key_ob = bpy.data.objects.new("key light", key)
    key_ob.location = key_location
    key_ob.rotation_euler = (math.radians(35), 0.0, math.radians(40))
    coll.objects.link(key_ob)
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = 2.5
    sun_ob = bpy.data.objects.new("sun", sun)
    sun_ob.rotation_euler = (math.radians(50), math.radians(-20), math.radians(-30))
    coll.objects.link(sun_ob)
    scene.world = scene_render.grey_world("grey world", 0.45, 0.9)


BUILDERS = {"bookshelf": build_bookshelf, "room": build_room, "desk": build_desk, "kitchen": build_kitchen, "workshop": build_workshop}


def _resolution(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return (int(w), int(h or w))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", choices=SCENES, default="bookshelf")
    ap.add_argument("--out", required=True, help="scene folder to write")
    ap.add_argument("--views", type=int, default=48, help="training views, on the rings")
    ap.add_argument("--layout", choices=("rings", "inside", "walk"), default="rings",
                    help="training cameras round the scene (rings), in its middle looking outward (inside), or "
                    "walking past its front (walk)")
    ap.add_argument("--rings", default="20,40", help="training ring elevations in degrees (walk: the passes')")
    ap.add_argument("--pitches", help="inside: the training cameras' pitches in degrees (default: the room "
                    "-10,-30, the workshop -25,-50)")
    ap.add_argument("--resolution", type=_resolution, default=(200, 150), help="WxH (or one number)")
    ap.add_argument("--holdout-views", type=int, default=8)
    ap.add_argument("--holdout-elevation", type=float,
                    help="degrees (default 30; inside: the pitch, the mean of the training pitches)")
    ap.add_argument("--holdout-distance", type=float,
                    help="factor of the training distance (default 0.85; inside: of the circle, 1.5)")
    ap.add_argument("--margin", type=float, default=0.9, help="framing: 1 fits the bounding sphere in view")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--engine", default="CYCLES", choices=scene_render.ENGINES)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--no-points", action="store_true", help="write no seed points (fit from random points)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-blend")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    inside = args.layout == "inside"
    pitches = tuple(float(p) for p in (args.pitches or INSIDE_PITCHES.get(args.scene, "-10,-30")).split(","))
    if args.holdout_elevation is None:
        args.holdout_elevation = float(np.mean(pitches)) if inside else 30.0
    if args.holdout_distance is None:
        # toward the scene's surfaces, as the rings' 0.85 is: from inside that is outward (a
        # circle nearer the middle would see behind furniture no training view saw past)
        args.holdout_distance = 1.5 if inside else 0.85
    if inside and args.scene not in INSIDE_SCENES:
        ap.error(f"--layout inside is for {' and '.join(INSIDE_SCENES)} (a room round its middle)")
    if args.layout == "walk" and args.scene not in WALK_SCENES:
        ap.error(f"--layout walk is for {', '.join(WALK_SCENES)} (things with a front, against a wall)")

    t0 = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = args.scene
    if inside and args.scene == "room":
        objs = build_room(scene, args.seed, closed=True)
    else:
        objs = BUILDERS[args.scene](scene, args.seed)
        objs = enclose(objs, scene.collection) if inside else objs
    settings = scene_render.RenderSettings(
        views=args.views, resolution=args.resolution, samples=args.samples, engine=args.engine,
        points=0 if args.no_points else args.points, layout=args.layout.upper(), margin=args.margin,
        ring_elevations=tuple(float(e) for e in args.rings.split(",")),
        walk_elevations=tuple(float(e) for e in args.rings.split(",")),
        inside_pitches=pitches, seed=args.seed, transparent=False,
        holdout_views=args.holdout_views, holdout_elevation=args.holdout_elevation,
        holdout_distance=args.holdout_distance, extra={"generator": "tools/make_scenes.py", "scene": args.scene})

    summary = render_folder(objs, scene, settings, args)
    if not args.quiet:
        print(f"wrote {summary['views']} views ({summary['holdout_views']} held out) of {len(summary['objects'])} "
              f"objects to {summary['folder']} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
