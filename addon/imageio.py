# SPDX-License-Identifier: GPL-3.0-or-later
"""Small, dependency-free image files: read uncompressed OpenEXR, write PNG.

Blender's Python has numpy but no imaging library, and Blender's own image API cannot
return a chosen render pass as an array. The renderer therefore writes a multilayer EXR
without compression, which this module reads with numpy, and labels are written as exact
integer PNGs (8 or 16 bit greyscale) by a tiny encoder here.
"""
from __future__ import annotations

import struct
import zlib
from typing import Dict

import numpy as np

_EXR_MAGIC = 20000630
# OpenEXR pixel types: UINT, HALF, FLOAT
_EXR_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


class ImageFormatError(ValueError):
    pass


def _read_cstr(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8", "replace"), end + 1


def _parse_header(buf: bytes, pos: int) -> tuple[dict, int]:
    """One EXR header: attributes until an empty name. Returns (header, next pos)."""
    header: dict = {"channels": []}
    while True:
        name, pos = _read_cstr(buf, pos)
        if not name:
            return header, pos
        _atype, pos = _read_cstr(buf, pos)
        size = struct.unpack_from("<i", buf, pos)[0]
        pos += 4
        value = buf[pos:pos + size]
        pos += size
        if name == "channels":
            p = 0
            while p < len(value) and value[p] != 0:
                cname, p = _read_cstr(value, p)
                ptype, _plinear, xs, ys = struct.unpack_from("<iB3xii", value, p)
                p += 16
                header["channels"].append((cname, ptype, xs, ys))
        elif name == "compression":
            header["compression"] = value[0]
        elif name == "dataWindow":
            header["dataWindow"] = struct.unpack_from("<iiii", value, 0)
        elif name == "chunkCount":
            header["chunkCount"] = struct.unpack_from("<i", value, 0)[0]
        elif name == "name":
            header["name"] = value.rstrip(b"\0").decode("utf-8", "replace")
        elif name == "type":
            header["type"] = value.rstrip(b"\0").decode("utf-8", "replace")


def read_exr_channels(path: str) -> Dict[str, np.ndarray]:
    """Read every channel of an uncompressed scanline OpenEXR file (single- or multi-part).

    Returns ``{channel name: H x W array}`` (float32 for HALF/FLOAT, uint32 for UINT).
    In a multi-part file a channel name that does not already start with its part's name
    is prefixed with it ("part.channel").
    """
    with open(path, "rb") as fh:
        buf = fh.read()
    if len(buf) < 8 or struct.unpack_from("<i", buf, 0)[0] != _EXR_MAGIC:
        raise ImageFormatError(f"{path} is not an OpenEXR file")
    version = struct.unpack_from("<i", buf, 4)[0]
    if version & 0x200:
        raise ImageFormatError(f"{path}: tiled EXR files are not supported")
    if version & 0x800:
        raise ImageFormatError(f"{path}: deep EXR files are not supported")
    multipart = bool(version & 0x1000)
    pos = 8
    headers = []
    if multipart:
        while buf[pos] != 0:
            header, pos = _parse_header(buf, pos)
            headers.append(header)
        pos += 1
    else:
        header, pos = _parse_header(buf, pos)
        headers.append(header)
    prepared = []
    for header in headers:
        if header.get("type", "scanlineimage") != "scanlineimage":
            raise ImageFormatError(f"{path}: EXR part of type {header.get('type')} is not supported")
        if header.get("compression") != 0:
            raise ImageFormatError(
                f"{path}: compressed EXR (codec {header.get('compression')}); write it with codec NONE")
        if "dataWindow" not in header or not header["channels"]:
            raise ImageFormatError(f"{path}: EXR header without channels or data window")
        xmin, ymin, xmax, ymax = header["dataWindow"]
        width, height = xmax - xmin + 1, ymax - ymin + 1
        for cname, ptype, xs, ys in header["channels"]:
            if xs != 1 or ys != 1:
                raise ImageFormatError(f"{path}: sub-sampled channel {cname} is not supported")
            if ptype not in _EXR_TYPES:
                raise ImageFormatError(f"{path}: unknown pixel type {ptype} in channel {cname}")
        count = header.get("chunkCount", height)
        offsets = np.frombuffer(buf, dtype="<u8", count=count, offset=pos)
        pos += 8 * count
        prepared.append((header, width, height, ymin, offsets))

    out: Dict[str, np.ndarray] = {}
    for part, (header, width, height, ymin, offsets) in enumerate(prepared):
        chans = header["channels"]
        prefix = header.get("name", "") if multipart else ""
        names = [c[0] if (not prefix or c[0].startswith(prefix)) else f"{prefix}.{c[0]}" for c in chans]
        line_dtype = np.dtype([(f"c{i}", _EXR_TYPES[c[1]], (width,)) for i, c in enumerate(chans)])
        arrays = [np.empty((height, width), dtype=np.uint32 if c[1] == 0 else np.float32) for c in chans]
        head = 12 if multipart else 8
        for off in offsets:
            off = int(off)
            if multipart:
                pnum, y, size = struct.unpack_from("<iii", buf, off)
                if pnum != part:
                    raise ImageFormatError(f"{path}: chunk of part {pnum} found in the table of part {part}")
            else:
                y, size = struct.unpack_from("<ii", buf, off)
            if size != line_dtype.itemsize:
                raise ImageFormatError(
                    f"{path}: unexpected scanline size {size} (expected {line_dtype.itemsize})")
            row = np.frombuffer(buf, dtype=line_dtype, count=1, offset=off + head)[0]
            r = y - ymin
            for i in range(len(chans)):
                arrays[i][r] = row[f"c{i}"]
        out.update(zip(names, arrays))
    return out


def find_channel(channels: Dict[str, np.ndarray], *suffixes: str) -> np.ndarray | None:
    """First channel whose name ends with one of ``suffixes`` (e.g. 'IndexOB.X')."""
    for suffix in suffixes:
        for name, arr in channels.items():
            if name == suffix or name.endswith("." + suffix):
                return arr
    return None


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def write_png(path: str, array: np.ndarray) -> None:
    """Write an H x W (grey) or H x W x 3/4 uint8/uint16 array as a PNG, exactly."""
    arr = np.asarray(array)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs uint8 or uint16 data, not {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    height, width, nch = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[nch]
    depth = 8 if arr.dtype == np.uint8 else 16
    data = arr.astype(">u2" if depth == 16 else np.uint8, copy=False).reshape(height, -1)
    raw = np.zeros((height, data.shape[1] * data.itemsize + 1), dtype=np.uint8)
    raw[:, 1:] = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8).reshape(height, -1)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(_png_chunk(b"IHDR", ihdr))
        fh.write(_png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
        fh.write(_png_chunk(b"IEND", b""))
