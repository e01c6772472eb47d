# SPDX-License-Identifier: GPL-3.0-or-later
"""A stand-in driver (no Blender) for the harness's own test: it dies by SIGSEGV while a file
named in argv[1] does not exist yet (making it first), after scribbling into its home, and
otherwise reports what it found in its home."""
import json
import os
import signal
import sys

flag, home, mode = sys.argv[1], sys.argv[2], sys.argv[3]
found = sorted(os.listdir(home))
with open(os.path.join(home, "written by a run"), "a", encoding="utf-8") as fh:
    fh.write("x")
if mode == "always" or not os.path.exists(flag):
    open(flag, "w").close()
    os.kill(os.getpid(), signal.SIGSEGV)
print("MASKFIELD_RESULTS " + json.dumps({"results": {"home": {"ok": True, "detail": json.dumps(found)}},
                                          "times": {}}))
