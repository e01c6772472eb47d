# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene settings of the add-on (``scene.maskfield``) and its prompts."""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

SOURCE_ITEMS = [
    ("OBJECTS", "Selected objects", "Render the selected objects of this scene and train on the renders "
     "(offline: object names give the meanings)", "OBJECT_DATA", 0),
    ("PHOTOS", "Photos folder", "A folder of photos with cameras (transforms.json or COLMAP sparse/0)",
     "IMAGE_DATA", 1),
    ("SPLAT", "Gaussian .ply + photos", "An existing 3D Gaussian Splatting .ply and the photos it was made from",
     "OUTLINER_OB_POINTCLOUD", 2),
]

MODE_ITEMS = [
    ("POINTS", "Points", "A point-cloud object of the selected Gaussians per prompt"),
    ("FACES", "Faces", "The faces of the source meshes that match a prompt, as new objects; for photo sources "
     "(no meshes) a closed, vertex-coloured mesh made from the prompt's Gaussians"),
    ("SELECT", "Select", "Only select what matches (faces of the source meshes, or points of the imported run)"),
]

DEVICE_ITEMS = [
    ("auto", "Auto", "CUDA if available, else Apple MPS, else the CPU"),
    ("cpu", "CPU", "Run on the CPU"),
    ("cuda", "CUDA", "NVIDIA GPU"),
    ("mps", "MPS", "Apple GPU"),
]

LAYOUT_ITEMS = [
    ("HEMISPHERE", "Hemisphere", "Cameras spread evenly over the upper half sphere"),
    ("SPHERE", "Sphere", "Cameras spread evenly over the whole sphere"),
    ("RINGS", "Rings", "Cameras in rings at a few elevations"),
    ("INSIDE", "Inside", "Cameras in the middle of the objects looking outward, as when filming a room "
     "from inside (select the room's walls and furnishings)"),
    ("WALK", "Walk", "Cameras walking past one side of the objects (Walk Side), for things against a wall: "
     "a counter, a shelf"),
]

WALK_SIDE_ITEMS = [
    ("FRONT", "Front", "The objects' -Y side, as Blender's front view shows them"),
    ("BACK", "Back", "The +Y side"),
    ("LEFT", "Left", "The -X side"),
    ("RIGHT", "Right", "The +X side"),
]


GRANULARITY_ITEMS = [
    ("auto", "Auto", "What the prompt's best queries mostly matched in training"),
    ("part", "Part", "Parts (SAM's small masks): each part of the thing as its own object"),
    ("object", "Object", "Whole objects (SAM's medium masks)"),
    ("group", "Group", "Groups of objects (SAM's large masks)"),
    ("any", "Any", "Every query of the prompt's meaning, whatever its granularity"),
]
POINT_GRANULARITY_ITEMS = [item for item in GRANULARITY_ITEMS if item[0] in ("part", "object", "group")]


class MaskFieldPrompt(bpy.types.PropertyGroup):
    text: StringProperty(name="Prompt", description="What to find, e.g. 'chair'")  # type: ignore[valid-type]
    enabled: BoolProperty(name="Use", default=True)  # type: ignore[valid-type]
    granularity: EnumProperty(name="Granularity", items=GRANULARITY_ITEMS, default="auto",  # type: ignore[valid-type]
                              description="Parts, the whole object, or a group of objects")


class MaskFieldSettings(bpy.types.PropertyGroup):
    source: EnumProperty(name="Source", items=SOURCE_ITEMS, default="OBJECTS")  # type: ignore[valid-type]
    scene_dir: StringProperty(  # type: ignore[valid-type]
        name="Scene folder", subtype="DIR_PATH",
        description="Photos with cameras (transforms.json, or COLMAP sparse/0 plus images/)")
    splat_path: StringProperty(  # type: ignore[valid-type]
        name="Gaussians", subtype="FILE_PATH", description="An existing 3D Gaussian Splatting .ply")
    run_dir: StringProperty(  # type: ignore[valid-type]
        name="Run folder", subtype="DIR_PATH", default="//maskfield_run/",
        description="Where training writes its results (and reads them for Segment)")
    views: IntProperty(name="Views", default=40, min=4, max=1000,  # type: ignore[valid-type]
                       description="Number of rendered views (selected-objects source)")
    resolution: IntProperty(name="Resolution", default=256, min=32, max=4096,  # type: ignore[valid-type]
                            description="Size in pixels of the rendered views")
    samples: IntProperty(name="Samples", default=16, min=1, max=4096,  # type: ignore[valid-type]
                         description="Cycles samples per rendered view")
    engine: EnumProperty(  # type: ignore[valid-type]
        name="Engine", default="CYCLES",
        items=[("CYCLES", "Cycles", "Path-traced views (the object-index pass comes with them)"),
               ("EEVEE", "EEVEE", "Fast rasterised views; a 1-sample Cycles pass gives the object index"),
               ("WORKBENCH", "Workbench", "Flat solid-colour views, fastest; a 1-sample Cycles pass gives the object index")],
        description="Render engine of the views (the object-index labels always come from Cycles)")
    seed_points: IntProperty(name="Seed points", default=20000, min=100, max=10000000,  # type: ignore[valid-type]
                             description="Points sampled on the objects' surfaces to start the Gaussians from")
    layout: EnumProperty(name="Cameras", items=LAYOUT_ITEMS, default="HEMISPHERE")  # type: ignore[valid-type]
    walk_side: EnumProperty(name="Walk Side", items=WALK_SIDE_ITEMS, default="FRONT",  # type: ignore[valid-type]
                            description="Which side of the objects the Walk cameras pass")
    photo_size: IntProperty(  # type: ignore[valid-type]
        name="Photo size", default=0, min=0, max=100000, subtype="PIXEL",
        description="Longest side, in pixels, the photos are fitted at (0: the backend's default, 1600 with "
                    "CUDA and 256 on a CPU or Apple GPU; larger shows more detail and takes longer)")
    iterations: IntProperty(  # type: ignore[valid-type]
        name="Fit iterations", default=0, min=0, max=1000000,
        description="Colour-fit steps of the Gaussians (0: the backend's default)")
    field_iterations: IntProperty(  # type: ignore[valid-type]
        name="Field iterations", default=0, min=0, max=1000000,
        description="Mask-field training steps (0: the backend's default)")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")  # type: ignore[valid-type]
    import_after_train: BoolProperty(  # type: ignore[valid-type]
        name="Import Gaussians after training", default=False,
        description="Add the trained Gaussians as a point object when training ends")
    prompts: CollectionProperty(type=MaskFieldPrompt)  # type: ignore[valid-type]
    prompt_index: IntProperty(default=0)  # type: ignore[valid-type]
    mode: EnumProperty(name="Result", items=MODE_ITEMS, default="POINTS")  # type: ignore[valid-type]
    split_in_place: BoolProperty(  # type: ignore[valid-type]
        name="Split originals", default=False,
        description="Faces mode: also remove the segmented faces from the original objects; Points mode: remove "
                    "the segmented Gaussians from the run's imported point object (undo with Ctrl+Z); off, the "
                    "originals are left untouched")
    cursor_granularity: EnumProperty(  # type: ignore[valid-type]
        name="Granularity", items=POINT_GRANULARITY_ITEMS, default="object",
        description="What Select at 3D Cursor takes: the part under the cursor, the object, or its group")
    export_supersplat: BoolProperty(  # type: ignore[valid-type]
        name="SuperSplat files", default=False,
        description="Segment also writes SuperSplat's compressed .ply of each segment (needs Node.js and "
                    "@playcanvas/splat-transform where the backend runs); the standard .ply stays the reference")
    use_threshold: BoolProperty(name="Threshold", default=False,  # type: ignore[valid-type]
                                description="Use a custom threshold instead of the backend's")
    threshold: FloatProperty(name="Threshold", default=0.5, min=0.0, max=1.0,  # type: ignore[valid-type]
                             description="Minimum score for a Gaussian or face to belong to a prompt")
    show_settings: BoolProperty(name="Settings", default=False)  # type: ignore[valid-type]


classes = (MaskFieldPrompt, MaskFieldSettings)


def register() -> None:
    bpy.types.Scene.maskfield = PointerProperty(type=MaskFieldSettings)  # type: ignore[attr-defined,func-returns-value]


def unregister() -> None:
    del bpy.types.Scene.maskfield  # type: ignore[attr-defined]
