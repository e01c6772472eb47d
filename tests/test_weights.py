# SPDX-License-Identifier: GPL-3.0-or-later
"""Checkpoint registry and downloader, against a local HTTP server on 127.0.0.1 only.

The server runs in a thread, serves one small generated file and stops at the end of each
test (and by itself after a minute at most). Modes: normal (with Range support), cut the
connection part-way (a given number of times), ignore Range, 404 for everything.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from maskfield.events import MaskFieldError, Reporter
from maskfield.priors import weights as W
from maskfield.priors.weights import (
    REGISTRY,
    DownloadError,
    WeightEntry,
    checkpoint_path,
    default_weights_dir,
    download,
    missing_checkpoints,
    missing_weights_message,
    resolve_checkpoint,
    verify_file,
)

DATA = random.Random(1234).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # per-connection socket timeout on the server side

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.requests.append({"path": self.path, "range": self.headers.get("Range")})
            mode = srv.mode
            cut_now = srv.cuts_left > 0
            if cut_now and mode == "cut":
                srv.cuts_left -= 1
        body = srv.files.get(self.path)
        if mode == "404" or body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "ignore_range":
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            start = int(m.group(1)) if m else 0
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if mode == "cut" and cut_now:
            self.wfile.write(payload[: srv.cut_at])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(payload)


class LocalServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.httpd.requests = []
        self.httpd.mode = "normal"
        self.httpd.cuts_left = 0
        self.httpd.cut_at = 0
        self.httpd.files = {"/weights/blob.pth": DATA}
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self._stopper = threading.Timer(60.0, self.stop)  # bounded: stops by itself
        self._stopper.daemon = True
        self._stopper.start()

    def url(self, path="/weights/blob.pth"):
        return f"http://127.0.0.1:{self.port}{path}"

    def set(self, mode="normal", cuts=0, cut_at=0):
        with self.httpd.lock:
            self.httpd.mode = mode
            self.httpd.cuts_left = cuts
            self.httpd.cut_at = cut_at

    @property
    def requests(self):
        with self.httpd.lock:
            return list(self.httpd.requests)

    def stop(self):
        self._stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LocalServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("MASKFIELD_OFFLINE", raising=False)
    monkeypatch.delenv("MASKFIELD_WEIGHTS_DIR", raising=False)


def _entry(url, sha256=SHA, size=len(DATA), filename="blob.pth", zip_archive=False):
    return WeightEntry(name="test_blob", filename=filename, urls=(url,), sha256=sha256, size=size,
                       description="test blob", zip_archive=zip_archive)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------
# registry and places
# --------------------------------------------------------------------------------------
def test_registry_entries():
    assert set(REGISTRY) == {"sam_vit_b", "sam_vit_l", "sam_vit_h", "clip_vit_b16_openai"}
    for name, e in REGISTRY.items():
        assert e.name == name
        assert e.url.startswith("https://") and e.url.endswith("/" + e.filename)
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
    assert REGISTRY["sam_vit_b"].url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert REGISTRY["sam_vit_h"].size == 2_564_550_879
    clip = REGISTRY["clip_vit_b16_openai"]
    assert clip.url.split("/")[-2] == clip.sha256  # open_clip's convention: sha256 in the path


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(MaskFieldError, match="sam_vit_b"):
        resolve_checkpoint("sam_vit_x", weights_dir=tmp_path, allow_download=False)


def test_default_weights_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_weights_dir() == Path.home() / ".cache" / "maskfield" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_weights_dir() == tmp_path / "xdg" / "maskfield" / "weights"
    monkeypatch.setenv("MASKFIELD_WEIGHTS_DIR", str(tmp_path / "w"))
    assert default_weights_dir() == tmp_path / "w"
    assert checkpoint_path("sam_vit_b") == tmp_path / "w" / "sam_vit_b_01ec64.pth"


def test_missing_weights_message_lists_file_address_and_path(tmp_path):
    msg = missing_weights_message(["sam_vit_b", "clip_vit_b16_openai"], tmp_path)
    for name in ("sam_vit_b", "clip_vit_b16_openai"):
        e = REGISTRY[name]
        assert e.filename in msg
        assert e.url in msg
        assert str(tmp_path.resolve() / e.filename) in msg
    assert missing_checkpoints(["sam_vit_b", "sam_vit_l"], tmp_path) == ["sam_vit_b", "sam_vit_l"]


# --------------------------------------------------------------------------------------
# downloads
# --------------------------------------------------------------------------------------
def test_download_success_then_cached(server, tmp_path):
    entry = _entry(server.url())
    path = resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=Reporter("none"))
    assert path == tmp_path / "blob.pth"
    assert path.read_bytes() == DATA
    assert not (tmp_path / "blob.pth.part").exists()
    assert json.loads((tmp_path / "blob.pth.verified.json").read_text())["sha256"] == SHA
    n = len(server.requests)
    # second call: verified from the stamp, no request
    assert resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=Reporter("none")) == path
    assert len(server.requests) == n


def test_url_override_and_progress_events(server, tmp_path):
    stream = io.StringIO()
    entry = _entry("http://127.0.0.1:1/never-used")
    path = resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, url=server.url(),
                              reporter=Reporter("jsonl", stream=stream))
    assert path.read_bytes() == DATA
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    progress = [e for e in events if e["event"] == "progress" and e["stage"] == "download"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == len(DATA)


def test_resume_after_cut_within_one_call(server, tmp_path):
    server.set("cut", cuts=1, cut_at=100_000)
    dest = download(server.url(), tmp_path / "blob.pth", sha256=SHA, size=len(DATA), reporter=Reporter("none"),
                    chunk=1 << 16)
    assert dest.read_bytes() == DATA
    ranges = [r["range"] for r in server.requests]
    assert ranges[0] is None and ranges[1] == "bytes=100000-"


def test_resume_across_calls(server, tmp_path):
    server.set("cut", cuts=1, cut_at=120_000)
    with pytest.raises(DownloadError):
        download(server.url(), tmp_path / "blob.pth", sha256=SHA, size=len(DATA), reporter=Reporter("none"),
                 retries=0, chunk=1 << 16)
    part = tmp_path / "blob.pth.part"
    assert part.stat().st_size == 120_000
    assert not (tmp_path / "blob.pth").exists()
    server.set("normal")
    path = resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=_entry(server.url()), reporter=Reporter("none"))
    assert path.read_bytes() == DATA
    assert server.requests[-1]["range"] == "bytes=120000-"
    assert not part.exists()


def test_server_that_ignores_range_restarts(server, tmp_path):
    part = tmp_path / "blob.pth.part"
    part.write_bytes(b"\0" * 5000)  # a stale partial whose bytes are wrong
    server.set("ignore_range")
    dest = download(server.url(), tmp_path / "blob.pth", sha256=SHA, size=len(DATA), reporter=Reporter("none"))
    assert dest.read_bytes() == DATA
    assert server.requests[0]["range"] == "bytes=5000-"


def test_partial_longer_than_file_restarts(server, tmp_path):
    part = tmp_path / "blob.pth.part"
    part.write_bytes(DATA + b"junk")
    # size unknown: the server's 416 answer tells us the partial is no good
    dest = download(server.url(), tmp_path / "blob.pth", sha256=SHA, size=None, reporter=Reporter("none"))
    assert dest.read_bytes() == DATA


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    entry = _entry(server.url(), sha256="0" * 64)
    with pytest.raises(MaskFieldError) as info:
        resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=Reporter("none"))
    msg = str(info.value)
    assert "SHA-256" in msg and "deleted" in msg
    assert not (tmp_path / "blob.pth").exists()
    assert not (tmp_path / "blob.pth.part").exists()


def test_wrong_size_announced_is_refused(server, tmp_path):
    with pytest.raises(MaskFieldError, match="expected 12345"):
        resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=_entry(server.url(), size=12345),
                           reporter=Reporter("none"))
    assert not (tmp_path / "blob.pth").exists()


def test_404_gives_the_missing_weights_message(server, tmp_path):
    server.set("404")
    entry = _entry(server.url())
    with pytest.raises(MaskFieldError) as info:
        resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=Reporter("none"))
    msg = str(info.value)
    assert "404" in msg
    assert "blob.pth" in msg and server.url() in msg and str(tmp_path.resolve() / "blob.pth") in msg


def test_no_network_connection_refused(tmp_path):
    entry = _entry(f"http://127.0.0.1:{_closed_port()}/blob.pth")
    with pytest.raises(MaskFieldError) as info:
        resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=Reporter("none"), timeout=5)
    msg = str(info.value)
    assert "refused" in msg and str(tmp_path.resolve() / "blob.pth") in msg and entry.url in msg
    assert not (tmp_path / "blob.pth").exists()


def test_offline_env_var_forbids_downloads(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MASKFIELD_OFFLINE", "1")
    with pytest.raises(MaskFieldError) as info:
        resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=_entry(server.url()))
    assert "MASKFIELD_OFFLINE" in str(info.value) and str(tmp_path.resolve() / "blob.pth") in str(info.value)
    monkeypatch.delenv("MASKFIELD_OFFLINE")
    with pytest.raises(MaskFieldError, match="not allowed"):
        resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=_entry(server.url()), allow_download=False)
    assert server.requests == []


def test_offline_with_a_good_cached_file_works(tmp_path, monkeypatch):
    (tmp_path / "blob.pth").write_bytes(DATA)
    monkeypatch.setenv("MASKFIELD_OFFLINE", "1")
    entry = _entry("http://127.0.0.1:1/x")
    assert resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry) == tmp_path / "blob.pth"


def test_local_file_is_checked_and_used_in_place(server, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "blob.pth").write_bytes(DATA)
    entry = _entry(server.url())
    assert resolve_checkpoint("test_blob", weights_dir=tmp_path / "w", entry=entry,
                              local_file=mine / "blob.pth") == mine / "blob.pth"
    assert resolve_checkpoint("test_blob", weights_dir=tmp_path / "w", entry=entry, local_file=mine) == mine / "blob.pth"
    assert not (mine / "blob.pth.verified.json").exists()  # the user's folder is left alone

    bad = mine / "bad.pth"
    bad.write_bytes(DATA[:-10] + b"0123456789")
    with pytest.raises(MaskFieldError, match="SHA-256 mismatch"):
        resolve_checkpoint("test_blob", weights_dir=tmp_path / "w", entry=entry, local_file=bad)
    assert bad.exists()  # never touched
    with pytest.raises(MaskFieldError, match="does not exist"):
        resolve_checkpoint("test_blob", weights_dir=tmp_path / "w", entry=entry, local_file=mine / "nope.pth")
    assert server.requests == []


def test_corrupt_cached_file_is_detected_and_downloaded_again(server, tmp_path):
    entry = _entry(server.url())
    stream = io.StringIO()
    rep = Reporter("jsonl", stream=stream)
    path = resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=rep)
    # damage one byte (same size) and give it a new modification time: the stamp is stale
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF
    path.write_bytes(bytes(raw))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    n = len(server.requests)
    assert resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=rep) == path
    assert path.read_bytes() == DATA
    assert len(server.requests) == n + 1
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(e["event"] == "log" and e["level"] == "warning" and "damaged" in e["message"] for e in logs)

    # the damaged copy was ours (we downloaded it): moved aside, never deleted
    assert (tmp_path / "blob.pth.damaged").read_bytes() == bytes(raw)
    # a truncated file we did not download (no stamp) in a folder the user gave is theirs:
    # caught by its size, reported, and left as it is
    path.write_bytes(DATA[:1000])
    (tmp_path / "blob.pth.verified.json").unlink()
    with pytest.raises(MaskFieldError, match="left as it is"):
        resolve_checkpoint("test_blob", weights_dir=tmp_path, entry=entry, reporter=rep)
    assert path.read_bytes() == DATA[:1000]
    # in our own cache folder (none given) the same file is moved aside and fetched again
    os.environ[W.ENV_WEIGHTS_DIR] = str(tmp_path)
    try:
        assert resolve_checkpoint("test_blob", entry=entry, reporter=rep).read_bytes() == DATA
    finally:
        del os.environ[W.ENV_WEIGHTS_DIR]
    assert (tmp_path / "blob.pth.damaged-2").read_bytes() == DATA[:1000]


def test_without_checksum_a_zip_archive_is_tested(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", random.Random(5).randbytes(50_000))
    good = buf.getvalue()
    server.httpd.files["/weights/model.pt"] = good
    entry = _entry(server.url("/weights/model.pt"), sha256=None, size=None, filename="model.pt", zip_archive=True)
    path = resolve_checkpoint("m", weights_dir=tmp_path / "a", entry=entry, reporter=Reporter("none"))
    assert path.read_bytes() == good

    damaged = bytearray(good)
    damaged[len(damaged) // 3] ^= 0xFF  # inside the stored member: CRC-32 fails
    server.httpd.files["/weights/model.pt"] = bytes(damaged)
    with pytest.raises(MaskFieldError, match="unusable"):
        resolve_checkpoint("m", weights_dir=tmp_path / "b", entry=entry, reporter=Reporter("none"))
    assert not (tmp_path / "b" / "model.pt").exists()
    assert verify_file(path, entry) is None


def test_cancel_keeps_the_partial(server, tmp_path):
    rep = Reporter("none")
    rep.cancel()
    from maskfield.events import Cancelled

    with pytest.raises(Cancelled):
        download(server.url(), tmp_path / "blob.pth", sha256=SHA, size=len(DATA), reporter=rep)
    assert not (tmp_path / "blob.pth").exists()


def test_tqdm_bar_without_reporter(server, tmp_path, capsys):
    dest = download(server.url(), tmp_path / "blob.pth", sha256=SHA)
    assert dest.read_bytes() == DATA
    assert W.verify_file(dest, sha256=SHA) is None
