# SPDX-License-Identifier: GPL-3.0-or-later
"""Mesh from Gaussians, measured: the backend's (scikit-image marching cubes over the Gaussians'
splatted opacity, maskfield.meshing) against Blender's own geometry nodes (Points to Volume,
radius from the Gaussians' scales, then Volume to Mesh), on the tabletop whose true meshes are
known (tools/make_tabletop.py builds them again from the same seed).

    python benchmarks/bench_mesh.py --scene SCENE --run RUN [--seed 0] [--picture docs/mesh_from_gaussians.png]

SCENE is a tabletop scene folder (make_tabletop.py), RUN a run fitted on it (gaussians.ply).
Each object's Gaussians are the visible ones that its label images vote for (as the 3D
accuracy of `maskfield evaluate`), so segmentation errors do not enter the figure. Prints,
per object and method: symmetric Chamfer distance to the true surface (mean of both
directions, in scene units; the objects are 0.3-0.5 across), whether the mesh is closed, and
seconds. With --picture, renders (Workbench, headless) the true meshes beside both results.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bpy  # noqa: E402

RADIUS_FACTORS = (1.0, 2.0, 3.0)  # Blender's point radius, in multiples of a Gaussian's mean scale


def world_triangles(ob) -> tuple[np.ndarray, np.ndarray]:
    me = ob.data
    me.calc_loop_triangles()
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    mw = np.array(ob.matrix_world)
    co = co @ mw[:3, :3].T + mw[:3, 3]
    tris = np.empty(len(me.loop_triangles) * 3, np.int32)
    me.loop_triangles.foreach_get("vertices", tris)
    return co, tris.reshape(-1, 3)


def gaussian_objects(run: Path, scene_dir: Path):
    """Each Gaussian's object by the label images' votes (-1: not visible / background)."""
    from maskfield.evaluate import object_votes
    from maskfield.priors.from_labels import load_object_names
    from maskfield.scene import load_scene
    from maskfield.splats.ply import read_ply

    gaussians = read_ply(run / "gaussians.ply")
    scene = load_scene(scene_dir, skip_missing=True)
    labels = scene_dir / "labels"
    votes = object_votes(gaussians, scene, range(len(scene)), labels)
    owner = np.where(votes.sum(1) >= 0.05, votes.argmax(1), -1)
    return gaussians, owner, load_object_names(labels)


def blender_mesh(points: np.ndarray, radius: np.ndarray, voxel: float):
    """Blender's geometry: points -> volume (sphere per point) -> mesh; returns (verts, tris, s)."""
    me = bpy.data.meshes.new("bench points")
    me.vertices.add(len(points))
    me.vertices.foreach_set("co", points.astype(np.float32).ravel())
    attr = me.attributes.new("gaussian_radius", "FLOAT", "POINT")
    attr.data.foreach_set("value", radius.astype(np.float32))
    ob = bpy.data.objects.new("bench points", me)
    bpy.context.scene.collection.objects.link(ob)
    ng = bpy.data.node_groups.new("bench points to mesh", "GeometryNodeTree")
    ng.interface.new_socket(name="Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    ng.interface.new_socket(name="Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = ng.nodes, ng.links
    gin, gout = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    named = nodes.new("GeometryNodeInputNamedAttribute")
    named.data_type = "FLOAT"
    named.inputs["Name"].default_value = "gaussian_radius"
    to_volume = nodes.new("GeometryNodePointsToVolume")
    to_mesh = nodes.new("GeometryNodeVolumeToMesh")
    for node in (to_volume, to_mesh):  # voxel size mode: a menu socket in 5.0, a property before
        if "Resolution Mode" in node.inputs:
            node.inputs["Resolution Mode"].default_value = "Size"
        else:
            node.resolution_mode = "VOXEL_SIZE"
        node.inputs["Voxel Size"].default_value = voxel
    to_volume.inputs["Density"].default_value = 1.0
    to_mesh.inputs["Threshold"].default_value = 0.5
    point_radius = nodes.new("GeometryNodeInputRadius")
    # the per-vertex radius becomes each point's radius (Mesh to Points writes the built-in
    # 'radius', which a custom attribute of that name would not survive), then each sphere's
    links.new(gin.outputs[0], to_points.inputs["Mesh"])
    links.new(named.outputs["Attribute"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], to_volume.inputs["Points"])
    links.new(point_radius.outputs["Radius"], to_volume.inputs["Radius"])
    links.new(to_volume.outputs["Volume"], to_mesh.inputs["Volume"])
    links.new(to_mesh.outputs["Mesh"], gout.inputs[0])
    mod = ob.modifiers.new("to mesh", "NODES")
    mod.node_group = ng
    t0 = time.perf_counter()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = ob.evaluated_get(depsgraph)
    result = bpy.data.meshes.new_from_object(evaluated, depsgraph=depsgraph)
    seconds = time.perf_counter() - t0
    tmp = bpy.data.objects.new("bench result", result)
    verts, tris = world_triangles(tmp)
    bpy.data.objects.remove(tmp)
    bpy.data.objects.remove(ob)
    bpy.data.node_groups.remove(ng)
    return verts, tris, seconds, result


def coloured_object(name: str, verts, tris, colours, offset, coll):
    me = bpy.data.meshes.new(name)
    me.from_pydata((verts + offset).tolist(), [], tris.tolist())
    if colours is not None:
        col = me.color_attributes.new("color", "FLOAT_COLOR", "POINT")
        lin = np.where(colours <= 0.04045, colours / 12.92, ((colours + 0.055) / 1.055) ** 2.4)
        col.data.foreach_set("color", np.concatenate([lin, np.ones((len(lin), 1))], 1).astype(np.float32).ravel())
    ob = bpy.data.objects.new(name, me)
    coll.objects.link(ob)
    return ob


def render_picture(path: Path, true_objs, rows, spacing: float) -> None:
    """Workbench, headless: true meshes (front row), the backend's meshes, Blender's meshes."""
    scene = bpy.context.scene
    scene.render.engine = "BLENDER_WORKBENCH"
    shading = scene.display.shading
    shading.light = "STUDIO"
    shading.color_type = "VERTEX"
    scene.render.resolution_x, scene.render.resolution_y = 1200, 700
    for ob in true_objs:  # the true meshes in their material colour
        ob.color = (*ob.active_material.diffuse_color[:3], 1.0) if ob.active_material else (0.7, 0.7, 0.7, 1)
        ob.data.color_attributes.new("color", "FLOAT_COLOR", "POINT").data.foreach_set(
            "color", np.tile(np.array(ob.color, np.float32), len(ob.data.vertices)))
    cam_data = bpy.data.cameras.new("bench camera")
    cam = bpy.data.objects.new("bench camera", cam_data)
    scene.collection.objects.link(cam)
    cam.location = (-0.3, -2.5 + 0.0 * spacing, 4.0)
    cam.rotation_euler = (float(np.arctan2(2.5 + spacing, 4.0)), 0.0, 0.0)
    cam_data.lens = 30
    scene.camera = cam
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    scene.render.filepath = str(tmp)
    bpy.ops.render.render(write_still=True)
    # each row's name, written where the row's front edge projects
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    from PIL import Image, ImageDraw, ImageFont

    image = Image.open(tmp).convert("RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=22)
    for label, y in rows:
        u, v, _ = world_to_camera_view(scene, cam, Vector((0.0, y, 0.2)))
        draw.text((20, (1 - v) * image.height - 11), label, fill=(255, 255, 255), font=font)
    image.save(tmp)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", default="out/demo/scene")
    ap.add_argument("--run", default="out/demo/run")
    ap.add_argument("--seed", type=int, default=0, help="the seed the tabletop was made with")
    ap.add_argument("--samples", type=int, default=20000, help="surface points per mesh for the Chamfer distance")
    ap.add_argument("--picture", default=None, help="write a PNG of the meshes beside the originals")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import make_tabletop
    from maskfield.meshing import MeshSettings, chamfer_distance, gaussians_to_mesh, is_closed, sample_surface

    run, scene_dir = Path(args.run), Path(args.scene)
    if not (run / "gaussians.ply").exists():
        raise SystemExit(f"{run} has no gaussians.ply: fit the tabletop first (see the docstring).")
    gaussians, owner, names = gaussian_objects(run, scene_dir)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    objs = {ob.name: ob for ob in make_tabletop.build_tabletop(args.seed, bpy.context.scene)}
    bpy.context.view_layer.update()  # world matrices
    results = []
    made = bpy.data.collections.new("bench meshes")
    bpy.context.scene.collection.children.link(made)
    spacing = 1.6
    for oid, name in sorted(names.items()):
        if name not in objs or name == "table":
            continue
        idx = np.nonzero(owner == oid)[0]
        true_v, true_t = world_triangles(objs[name])
        truth = sample_surface(true_v, true_t, args.samples)
        sub = gaussians.subset(__import__("torch").as_tensor(idx))
        mesh = gaussians_to_mesh(sub, MeshSettings())
        ours = sample_surface(mesh.vertices, mesh.faces, args.samples)
        row = {"object": name, "gaussians": int(len(idx)), "voxel": round(mesh.voxel, 5),
               "backend": {"chamfer": chamfer_distance(ours, truth), "closed": is_closed(mesh.faces),
                           "faces": int(len(mesh.faces)), "seconds": round(mesh.seconds, 3)}}
        coloured_object(f"{name} backend", mesh.vertices, mesh.faces, mesh.colours, (0, spacing, 0), made)
        p = {k: v.detach().numpy() for k, v in sub.params.items()}
        opaque = 1 / (1 + np.exp(-p["opacities"])) >= 0.1
        mean_scale = np.exp(p["scales"][opaque]).mean(1)
        best = None
        for factor in RADIUS_FACTORS:
            v, t, sec, result = blender_mesh(p["means"][opaque], factor * mean_scale, mesh.voxel)
            entry = {"radius_factor": factor, "faces": int(len(t)), "seconds": round(sec, 3),
                     "closed": is_closed(t) if len(t) else False,
                     "chamfer": chamfer_distance(sample_surface(v, t, args.samples), truth) if len(t) else float("inf")}
            row[f"blender_x{factor:g}"] = entry
            if best is None or entry["chamfer"] < best[0]:
                best = (entry["chamfer"], v, t)
                # coloured like the add-on does it: each vertex as its nearest Gaussian
                from scipy.spatial import cKDTree

                rgb = np.clip(p["sh0"].reshape(-1, 3)[opaque] * 0.28209479177387814 + 0.5, 0, 1)
                best_colours = rgb[cKDTree(p["means"][opaque]).query(v)[1]] if len(v) else None
            bpy.data.meshes.remove(result)
        coloured_object(f"{name} blender", best[1], best[2], best_colours, (0, 2 * spacing, 0), made)
        results.append(row)
        b = row["backend"]
        blender = "  ".join(f"x{f:g}: {row[f'blender_x{f:g}']['chamfer']:.4f} "
                            f"({'closed' if row[f'blender_x{f:g}']['closed'] else 'open'}, "
                            f"{row[f'blender_x{f:g}']['seconds']:.2f} s)" for f in RADIUS_FACTORS)
        print(f"{name:14s} {len(idx):6d} Gaussians  backend: {b['chamfer']:.4f} "
              f"({'closed' if b['closed'] else 'open'}, {b['seconds']:.2f} s)   Blender {blender}", flush=True)
    mean = {"backend": float(np.mean([r["backend"]["chamfer"] for r in results]))}
    for f in RADIUS_FACTORS:
        mean[f"blender_x{f:g}"] = float(np.mean([r[f"blender_x{f:g}"]["chamfer"] for r in results]))
    print("mean Chamfer distance: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    print("mean seconds: backend {:.2f}, ".format(np.mean([r["backend"]["seconds"] for r in results]))
          + ", ".join(f"blender_x{f:g} {np.mean([r[f'blender_x{f:g}']['seconds'] for r in results]):.2f}"
                      for f in RADIUS_FACTORS))
    if args.json:
        Path(args.json).write_text(json.dumps({"objects": results, "mean_chamfer": mean}, indent=1))
    if args.picture:
        for ob in list(objs.values()):
            if ob.name == "table":
                bpy.data.objects.remove(ob)
        render_picture(Path(args.picture), [o for n, o in objs.items() if n != "table"],
                       [("true meshes", 0.0), ("backend (marching cubes)", spacing),
                        ("Blender (points to volume)", 2 * spacing)], spacing)
        print(f"picture: {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
