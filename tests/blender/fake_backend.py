# SPDX-License-Identifier: GPL-3.0-or-later
"""A stand-in for ``python -m maskfield.cli`` that speaks the event protocol of contracts.md.

The add-on tests point the backend interpreter at a wrapper that runs this file, so the
add-on's subprocess handling, events, errors and result import can be tested without
PyTorch. It answers by rules instead of learning:

- ``train SCENE --out RUN``: writes RUN/gaussians.ply (the scene's points.ply as tiny
  Gaussians), RUN/field.pt and RUN/run.json after a few progress events.
- ``serve RUN``: says ``ready``, then answers JSON request lines like ``segment``.
- ``segment RUN --prompt P ... [--points F.npy] --out DIR``: a Gaussian belongs to a prompt
  when RUN/fake_truth.json says so (``{"prompt": [indices]}``); with ``--points``, a face
  belongs to the prompt that is part of its object's name (RUN/blender/faces.json).

Behaviour is switched with the environment variable FAKE_BACKEND_MODE: ``ok`` (default),
``die`` (progress, then exit 3 with a traceback on stderr), ``error`` (an error event, exit 2),
``slow`` (progress for a minute, stops on SIGTERM), ``garbage`` (non-JSON noise between events).
Every call appends its argv to FAKE_BACKEND_LOG when that variable is set.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import numpy as np


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "prompt"


def read_ply(path: str) -> tuple[np.ndarray, bytes]:
    with open(path, "rb") as fh:
        header = b""
        while True:
            line = fh.readline()
            header += line
            if line.strip() == b"end_header":
                break
        props = []
        count = 0
        for ln in header.decode().splitlines():
            w = ln.split()
            if w[:2] == ["element", "vertex"]:
                count = int(w[2])
            elif w and w[0] == "property":
                props.append((w[2], {"float": "<f4", "uchar": "u1", "double": "<f8"}[w[1]]))
        data = np.frombuffer(fh.read(), dtype=np.dtype(props), count=count)
    return data, header


def write_gaussians(path: str, xyz: np.ndarray, rgb01: np.ndarray) -> None:
    n = len(xyz)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
             "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.zeros(n, dtype=[(k, "<f4") for k in names])
    arr["x"], arr["y"], arr["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    for i in range(3):
        arr[f"f_dc_{i}"] = (rgb01[:, i] - 0.5) / 0.28209479177387814
        arr[f"scale_{i}"] = np.log(0.01)
    arr["opacity"] = 2.0
    arr["rot_0"] = 1.0
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    header += "".join(f"property float {k}\n" for k in names) + "end_header\n"
    with open(path, "wb") as fh:
        fh.write(header.encode())
        fh.write(arr.tobytes())


def write_subset(src: str, dst: str, idx: np.ndarray) -> None:
    data, header = read_ply(src)
    sub = data[idx]
    text = re.sub(rb"element vertex \d+", b"element vertex %d" % len(sub), header)
    with open(dst, "wb") as fh:
        fh.write(text)
        fh.write(sub.tobytes())


def opt(args: list[str], name: str, default=None):
    return args[args.index(name) + 1] if name in args else default


def opts(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name and i + 1 < len(args)]


def segment(run: str, prompts: list[str], points: str | None, out: str, req_id=None) -> None:
    os.makedirs(out, exist_ok=True)
    truth_path = os.path.join(run, "fake_truth.json")
    truth = json.load(open(truth_path, encoding="utf-8")) if os.path.isfile(truth_path) else {}
    entries = []
    emit("progress", stage="segment", done=0, total=len(prompts))
    for k, p in enumerate(prompts):
        idx = np.asarray(truth.get(p, []), dtype=np.int64)
        s = slug(p)
        np.savez(os.path.join(out, f"{s}.npz"), indices=idx, scores=np.ones(len(idx), np.float32))
        ply = None
        if len(idx):
            ply = f"{s}.ply"
            write_subset(os.path.join(run, "gaussians.ply"), os.path.join(out, ply), idx)
        entries.append({"prompt": p, "slug": s, "found": bool(len(idx)), "count": int(len(idx)),
                        "npz": f"{s}.npz", "ply": ply})
        emit("progress", stage="segment", done=k + 1, total=len(prompts))
    point_labels = None
    if points:
        pts = np.load(points)
        faces = json.load(open(os.path.join(os.path.dirname(points), "faces.json"), encoding="utf-8"))
        labels = np.full(len(pts), -1, dtype=np.int32)
        for entry in faces["objects"]:
            for k, p in enumerate(prompts):
                if p.lower() in entry["name"].lower():
                    sl = slice(entry["start"], entry["start"] + entry["count"])
                    labels[sl] = k
                    if os.environ.get("FAKE_BACKEND_HALF"):  # only the first half of the faces
                        labels[entry["start"] + entry["count"] // 2: sl.stop] = -1
                    break
        np.save(os.path.join(out, "point_labels.npy"), labels)
        np.save(os.path.join(out, "point_scores.npy"), (labels >= 0).astype(np.float32))
        point_labels = "point_labels.npy"
        for k, e in enumerate(entries):
            if np.any(labels == k):
                e["found"] = True
    with open(os.path.join(out, "segments.json"), "w", encoding="utf-8") as fh:
        json.dump({"prompts": entries, "point_labels": point_labels, "text_encoder": "names:hash-512"}, fh)
    emit("result", stage="segment", id=req_id, out=out)


def fake_tooling(args: list[str]) -> int:
    """``-m venv DIR`` makes DIR/bin/python (this fake again); ``-m pip ...`` pretends to install."""
    if args[1] == "venv":
        env = args[2]
        os.makedirs(os.path.join(env, "bin"), exist_ok=True)
        target = os.path.join(env, "bin", "python")
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(f"#!/bin/sh\nexec '{sys.executable}' '{os.path.abspath(__file__)}' \"$@\"\n")
        os.chmod(target, 0o755)
        print(f"created virtual environment {env}")
        return 0
    print("Collecting things")
    sys.stderr.write("a pip warning on stderr\n")
    print("Successfully installed " + " ".join(a for a in args[3:] if not a.startswith("-")))
    return 0


def fake_setup_script(args: list[str]) -> int:
    """``backend_setup.py torch|pip ...`` (the add-on's installer script): progress events and pip-like lines."""
    stage = "installing PyTorch" if args[1] == "torch" else "installing the backend"
    for done, line in enumerate(("Collecting things", "Using cached things.whl", "Installing collected packages",
                                 "Successfully installed things")):
        print(line)
        emit("progress", stage=stage, done=done + 1, total=4)
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["-m"] and args[1:2] in (["venv"], ["pip"]):
        return fake_tooling(args)
    if args and os.path.basename(args[0]) == "backend_setup.py":
        return fake_setup_script(args)
    if args[:2] == ["-m", "maskfield.cli"]:
        args = args[2:]
    log = os.environ.get("FAKE_BACKEND_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(args) + "\n")
    mode = os.environ.get("FAKE_BACKEND_MODE", "ok")
    cmd = args[0] if args else ""
    if cmd == "info":
        print(json.dumps({"versions": {"maskfield": "0.0-fake", "torch": "none"}, "devices": ["cpu"]}, indent=2))
        return 0
    if mode == "die":
        emit("progress", stage="fit", done=1, total=10)
        sys.stderr.write("Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: boom\n")
        return 3
    if mode == "error" and cmd != "serve":
        emit("error", message="the scene folder has 2 images but 5 cameras: fix transforms.json", kind="input")
        return 2
    if mode == "slow":
        stop = {"flag": False}
        signal.signal(signal.SIGTERM, lambda *a: stop.update(flag=True))
        for i in range(600):
            if stop["flag"]:
                emit("cancelled", message="cancelled; run the same command again to resume")
                return 130
            emit("progress", stage="fit", done=i, total=600)
            time.sleep(0.1)
        return 0
    if mode == "garbage":
        print("some library printed this")
        print("{not json")
    if cmd == "train":
        scene, run = args[1], opt(args, "--out")
        os.makedirs(run, exist_ok=True)
        for stage in ("fit", "priors", "field"):
            for i in range(0, 4):
                emit("progress", stage=stage, done=i, total=3)
        if os.environ.get("FAKE_BACKEND_WARN"):  # what the backend corrected, for the user to read
            for _ in range(2):  # said twice (two stages load the scene): shown once
                emit("log", level="warning", message=os.environ["FAKE_BACKEND_WARN"])
        emit("log", level="info", message="fake training done")
        ply = os.path.join(scene, "points.ply")
        if os.path.isfile(ply):
            pts, _ = read_ply(ply)
            xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1)
            rgb = np.stack([pts["red"], pts["green"], pts["blue"]], 1) / 255.0
        else:
            xyz = np.zeros((10, 3), np.float32)
            rgb = np.full((10, 3), 0.5)
        write_gaussians(os.path.join(run, "gaussians.ply"), xyz, rgb)
        with open(os.path.join(run, "field.pt"), "wb") as fh:
            fh.write(b"fake")
        with open(os.path.join(run, "run.json"), "w", encoding="utf-8") as fh:
            json.dump({"stages": {"fit": {}, "priors": {}, "field": {}}, "argv": args}, fh)
        emit("result", stage="fit", gaussians=len(xyz), test_psnr=30.0)
        emit("result", stage="train", run=run)
        return 0
    if cmd == "segment":
        segment(args[1], opts(args, "--prompt"), opt(args, "--points"), opt(args, "--out"))
        return 0
    if cmd == "serve":
        run = args[1]
        emit("ready", gaussians=0, text_encoder="names:hash-512")
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            if req.get("cmd") == "quit":
                break
            if mode == "error":
                emit("error", message="the scene folder has 2 images but 5 cameras: fix transforms.json",
                     kind="input")
                continue
            segment(run, req["prompts"], req.get("points"), req["out"], req.get("id"))
        return 0
    emit("error", message=f"fake backend: unknown command {cmd}", kind="usage")
    return 2


if __name__ == "__main__":
    sys.exit(main())
