# SPDX-License-Identifier: GPL-3.0-or-later
"""What the panel and the status bar show: the running task, the last message or error."""
from __future__ import annotations

import time

import bpy

from . import backend_client


class _Status:
    def __init__(self) -> None:
        self.error: str = ""
        self.info: str = ""
        self.warnings: list[str] = []
        self.render: tuple[int, int] | None = None  # (done, total) while rendering views
        self.render_cancel = False
        self.stamp = 0.0

    def set_error(self, message: str) -> None:
        self.error = message.strip()
        self.stamp = time.time()
        print(f"MaskField error: {self.error}")
        redraw()

    def set_info(self, message: str, warnings: list[str] | None = None) -> None:
        self.info = message.strip()
        self.error = ""
        self.warnings = list(warnings or [])
        self.stamp = time.time()
        print(f"MaskField: {self.info}")
        for w in self.warnings:
            print(f"MaskField warning: {w}")
        redraw()

    def clear(self) -> None:
        self.error = ""
        self.info = ""
        self.warnings = []

    @property
    def busy(self) -> bool:
        return self.render is not None or backend_client.active_job() is not None

    def progress(self) -> tuple[str, float] | None:
        """(text, fraction) of what runs now, or None."""
        if self.render is not None:
            done, total = self.render
            return f"Rendering views {done}/{total}", done / max(1, total)
        job = backend_client.active_job()
        if job is not None:
            return f"{job.label}: {job.stage_text}", job.fraction
        return None


STATUS = _Status()


def redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type in {"VIEW_3D", "STATUSBAR", "PREFERENCES"}:
                area.tag_redraw()


def popup_error(message: str) -> None:
    """A small popup with the error, when Blender has a window (not in background mode)."""
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None or not wm.windows or bpy.app.background:
        return

    def draw(menu, _context):
        for line in wrap(message, 70)[:12]:
            menu.layout.label(text=line)

    try:
        wm.popup_menu(draw, title="MaskField", icon="ERROR")
    except Exception:
        pass


def wrap(text: str, width: int) -> list[str]:
    import textwrap

    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(para, width) or [""])
    return lines


def draw_statusbar(self, context) -> None:
    prog = STATUS.progress()
    if prog is None:
        return
    text, frac = prog
    layout = self.layout
    if hasattr(layout, "progress"):
        layout.progress(factor=frac, type="BAR", text=f"MaskField: {text}")
    else:  # pragma: no cover - Blender < 4.0
        layout.label(text=f"MaskField: {text} ({frac * 100:.0f}%)")
    layout.operator("maskfield.cancel", text="", icon="CANCEL", emboss=False)


@bpy.app.handlers.persistent
def _reset_on_load(*_args) -> None:
    """Another file is loaded: a modal render is gone with the old file's window."""
    STATUS.render = None
    STATUS.render_cancel = False
    STATUS.clear()


def register() -> None:
    bpy.types.STATUSBAR_HT_header.append(draw_statusbar)
    backend_client.add_listener(redraw)
    if _reset_on_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_reset_on_load)


def unregister() -> None:
    bpy.types.STATUSBAR_HT_header.remove(draw_statusbar)
    backend_client.remove_listener(redraw)
    if _reset_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_reset_on_load)
