"""Prompt latency through `maskfield serve`, the process the add-on keeps alive between prompts.

    python benchmarks/bench_serve.py RUN [--prompt "red mug" --prompt table] [--repeats 5]
    python benchmarks/bench_serve.py RUN --at 0.4 0.1 0.2 [--at ...]   # select by pointing

Starts the server on a trained run, then times each request from the JSON line written to
its stdin to the result event read back (the segment .npz / .ply files and segments.json
are written inside that time, as for the add-on). The first request also loads the text
encoder; the target is under 1 s for every request after it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default="out/demo/run")
    ap.add_argument("--prompt", action="append", default=None)
    ap.add_argument("--at", action="append", nargs=3, type=float, default=None, metavar=("X", "Y", "Z"),
                    help="time selecting what is at these positions instead (no text)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "field.pt").exists():
        raise SystemExit(f"{run} holds no trained mask field; run `make demo` first or give a trained RUN folder.")
    prompts = args.prompt or ["red mug", "blue box", "green ball"]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "maskfield.cli", "serve", str(run), "--offline"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def read_until(kinds):
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") in kinds:
                return event
        raise SystemExit("the server exited early")

    ready = read_until({"ready", "error"})
    if ready["event"] == "error":
        raise SystemExit(f"serve failed: {ready.get('message')}")
    startup = time.perf_counter() - t0
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats + 1):
            t = time.perf_counter()
            what = {"at": args.at} if args.at else {"prompts": prompts}
            proc.stdin.write(json.dumps({"cmd": "segment", "id": i, **what, "out": tmp}) + "\n")
            event = read_until({"result", "error"})
            if event["event"] == "error":
                raise SystemExit(f"segment failed: {event.get('message')}")
            times.append(time.perf_counter() - t)
        proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        proc.stdin.close()
        proc.wait(timeout=30)
    later = sorted(times[1:])
    print(f"maskfield serve on {run} ({ready.get('gaussians'):,} Gaussians, {ready.get('text_encoder')}), "
          + (f"{len(args.at)} positions (--at) per request" if args.at else f"{len(prompts)} prompts per request"))
    print(f"start-up (load run and field): {startup:.2f} s")
    print(f"first request (loads the text encoder): {times[0]:.3f} s")
    print(f"later requests: median {later[len(later) // 2]:.3f} s, worst {later[-1]:.3f} s  (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
