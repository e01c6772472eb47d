# SPDX-License-Identifier: GPL-3.0-or-later
"""Checkpoints the priors need: where they come from, where they live, how they are checked.

The registry names four files (SAM ViT-B/L/H and OpenAI's CLIP ViT-B/16 as open_clip
downloads it). ``resolve_checkpoint(name)`` returns the path of a verified copy:

1. a file the user names (``local_file``), checked and used in place (never altered);
2. otherwise the copy in the weights folder (``default_weights_dir()``), checked;
3. otherwise a download from the official address into that folder.

Checks. A file is accepted only when its size and SHA-256 match the registry. Hashing a
2.5 GB file takes seconds, so a successful check leaves a small stamp next to the file
(``<file>.verified.json``: size, modification time, SHA-256); while the file's size and
modification time match the stamp it is not hashed again. Where the registry has no
SHA-256 (an entry added without one), the check falls back to the size, when known, plus
reading the file as a ZIP archive and testing every member's CRC-32 (PyTorch checkpoints
and TorchScript archives are ZIP files), so a truncated or damaged download is still caught;
the model loader's own loading is the last check.

A cached file that fails its check (in our cache folder, or one we downloaded) is moved
aside to ``<file>.damaged`` and fetched again, and a message says so; a file in a folder the
user gave (``weights_dir``, ``local_file``) that fails is never touched: the error says what
is wrong with it.

Downloads. ``download()`` streams into ``<file>.part`` with a progress bar (tqdm, or the
``maskfield.events.Reporter`` progress events), resumes a ``.part`` left by an earlier
attempt with an HTTP ``Range`` request (and starts again when the server ignores it),
retries a cut connection from where it stopped, and renames the file to its final name
only after size and checksum match. Nothing half-written ever carries the final name.

Offline. ``MASKFIELD_OFFLINE=1`` (or ``allow_download=False``, which the add-on sets when
Blender's online access is off) forbids downloads; a missing file then raises
``MaskFieldError`` whose message lists each missing file, its address and the exact path
to put it at. The same message comes when a download fails (no network, blocked, 404,
timeout), with the reason.

Checksums. SAM: the SHA-256 and sizes of Meta's files as published by several independent
projects that pin them (e.g. micro_sam's checksum table); the ``_4b8939`` style suffix in
the file name is only a prefix of another hash. CLIP: open_clip's ``pretrained.py`` (and
OpenAI's ``clip.py``) put the file's full SHA-256 in the URL path; the file size is not
published there, so it is ``None`` and only the SHA-256 is checked. Note that OpenAI's
``openaipublic.azureedge.net`` address has been reported to answer 404 since the Azure
CDN retirement (openai/CLIP issue #516); the registry keeps it (it is what open_clip
uses), the entry's ``urls`` may list mirrors tried in order, and a user can always pass
the file with ``local_file`` or put it in the weights folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from maskfield.events import MaskFieldError

__all__ = [
    "WeightEntry",
    "REGISTRY",
    "DownloadError",
    "default_weights_dir",
    "downloads_allowed",
    "checkpoint_path",
    "get_entry",
    "missing_checkpoints",
    "missing_weights_message",
    "verify_file",
    "resolve_checkpoint",
    "download",
]

ENV_WEIGHTS_DIR = "MASKFIELD_WEIGHTS_DIR"
ENV_OFFLINE = "MASKFIELD_OFFLINE"
USER_AGENT = "maskfield-weights/1 (+https://arxiv.org/abs/2407.01220)"
STAMP_SUFFIX = ".verified.json"
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class WeightEntry:
    """One checkpoint file: its name in the registry, file name, addresses and checks.

    ``urls`` are tried in order (the first is the official address). ``sha256`` and
    ``size`` are ``None`` where no trustworthy value is known; see the module notes.
    ``zip_archive`` says the file is a ZIP (PyTorch checkpoint / TorchScript archive),
    which allows a structural check when no SHA-256 is known.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    size: int | None = None
    description: str = ""
    homepage: str = ""
    zip_archive: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):  # a single address given as a string
            object.__setattr__(self, "urls", (self.urls,))
        else:
            object.__setattr__(self, "urls", tuple(self.urls))
        if self.sha256 is not None:
            sha = self.sha256.strip().lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"{self.name}: sha256 must be 64 hex digits, got {self.sha256!r}")
            object.__setattr__(self, "sha256", sha)
        if "/" in self.filename or "\\" in self.filename or self.filename in ("", ".", ".."):
            raise ValueError(f"{self.name}: filename must be a plain file name, got {self.filename!r}")

    @property
    def url(self) -> str:
        return self.urls[0] if self.urls else ""

    def with_url(self, url: str | Sequence[str]) -> "WeightEntry":
        """A copy that downloads from ``url`` (one address or several, tried in order)."""
        urls = (url,) if isinstance(url, str) else tuple(url)
        return dataclasses.replace(self, urls=urls)


_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM_HOME = "https://github.com/facebookresearch/segment-anything#model-checkpoints"

REGISTRY: dict[str, WeightEntry] = {
    "sam_vit_b": WeightEntry(
        name="sam_vit_b",
        filename="sam_vit_b_01ec64.pth",
        urls=(_SAM_BASE + "sam_vit_b_01ec64.pth",),
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size=375_042_383,
        description="Segment Anything ViT-B",
        homepage=_SAM_HOME,
    ),
    "sam_vit_l": WeightEntry(
        name="sam_vit_l",
        filename="sam_vit_l_0b3195.pth",
        urls=(_SAM_BASE + "sam_vit_l_0b3195.pth",),
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size=1_249_524_607,
        description="Segment Anything ViT-L",
        homepage=_SAM_HOME,
    ),
    "sam_vit_h": WeightEntry(
        name="sam_vit_h",
        filename="sam_vit_h_4b8939.pth",
        urls=(_SAM_BASE + "sam_vit_h_4b8939.pth",),
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size=2_564_550_879,
        description="Segment Anything ViT-H",
        homepage=_SAM_HOME,
    ),
    # open_clip's pretrained.py, ViT-B-16 / "openai": the TorchScript archive published by
    # OpenAI; its SHA-256 is the path component before the file name. Size not published.
    # open_clip loads it with create_model("ViT-B-16", pretrained=<path>,
    # force_quick_gelu=True) (OpenAI's weights were trained with QuickGELU).
    "clip_vit_b16_openai": WeightEntry(
        name="clip_vit_b16_openai",
        filename="ViT-B-16.pt",
        urls=(
            "https://openaipublic.azureedge.net/clip/models/"
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        ),
        sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
        size=None,
        description="OpenAI CLIP ViT-B/16 (as open_clip 'ViT-B-16' / 'openai')",
        homepage="https://github.com/openai/CLIP",
    ),
}


class DownloadError(MaskFieldError):
    """A download failed (network, HTTP status, cut connection, checksum)."""

    def __init__(self, message: str, reason: str = "", kind: str = "network"):
        super().__init__(message, kind=kind)
        self.reason = reason or message


# --------------------------------------------------------------------------------------
# places and lookups
# --------------------------------------------------------------------------------------
def default_weights_dir() -> Path:
    """``$MASKFIELD_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/maskfield/weights``, else
    ``~/.cache/maskfield/weights``."""
    env = os.environ.get(ENV_WEIGHTS_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "maskfield" / "weights"


def downloads_allowed() -> bool:
    """False when ``MASKFIELD_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() not in ("1", "true", "yes", "on")


def get_entry(name: str | WeightEntry) -> WeightEntry:
    if isinstance(name, WeightEntry):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise MaskFieldError(f"unknown checkpoint {name!r}; known checkpoints: {known}") from None


def _weights_dir(weights_dir: str | os.PathLike | None) -> Path:
    return Path(weights_dir).expanduser() if weights_dir else default_weights_dir()


def checkpoint_path(name: str | WeightEntry, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where the checkpoint lives (or will live) in the weights folder."""
    return _weights_dir(weights_dir) / get_entry(name).filename


def missing_checkpoints(
    names: Iterable[str | WeightEntry], weights_dir: str | os.PathLike | None = None
) -> list[str]:
    """The names whose file is absent from the weights folder or has the wrong size (a
    quick check, no hashing: ``resolve_checkpoint`` does the full one)."""
    missing = []
    for name in names:
        entry = get_entry(name)
        path = checkpoint_path(entry, weights_dir)
        if not path.is_file() or (entry.size is not None and path.stat().st_size != entry.size):
            missing.append(entry.name)
    return missing


def _human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"  # pragma: no cover


def missing_weights_message(
    names: Iterable[str | WeightEntry], weights_dir: str | os.PathLike | None = None, reason: str | None = None
) -> str:
    """A message a person can act on: for each checkpoint, the file, its address and the
    exact path to put it at."""
    folder = _weights_dir(weights_dir).resolve()
    entries = [get_entry(n) for n in names]
    lines = []
    if reason:
        lines.append(reason.rstrip("."))
    lines.append(
        "Missing model weights. Download this file and put it at the path shown:"
        if len(entries) == 1
        else "Missing model weights. Download these files and put each one at the path shown:"
    )
    for e in entries:
        lines.append(f"  - {e.description or e.name} [{e.name}] ({_human_size(e.size)})")
        lines.append(f"      file:    {e.filename}")
        if e.urls:
            lines.append(f"      address: {e.urls[0]}")
            for alt in e.urls[1:]:
                lines.append(f"      or:      {alt}")
        if e.homepage:
            lines.append(f"      about:   {e.homepage}")
        lines.append(f"      put at:  {folder / e.filename}")
        if e.sha256:
            lines.append(f"      sha256:  {e.sha256}")
    lines.append(
        f"The folder can be changed with {ENV_WEIGHTS_DIR} (or the weights folder setting); "
        "the checkpoint is checked (size, SHA-256) before use."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------
def _sha256_of(path: Path, chunk: int = 1 << 20, reporter=None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    bar = None
    if reporter is not None and total > (64 << 20):  # a big file: show the check's progress
        bar = reporter.progress("verify", total, desc=f"checking {path.name}")
    try:
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    break
                h.update(block)
                if bar is not None:
                    bar.update(len(block))
                if reporter is not None:
                    reporter.check_cancel()
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, sha256: str | None, downloaded: bool = False) -> None:
    try:
        st = path.stat()
        downloaded = downloaded or bool((_read_stamp(path) or {}).get("downloaded"))
        _stamp_path(path).write_text(
            json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256, "downloaded": downloaded})
        )
    except OSError:
        pass  # a read-only folder: the file is simply hashed again next time


def _remove_stamp(path: Path) -> None:
    try:
        _stamp_path(path).unlink()
    except OSError:
        pass


def _zip_problem(path: Path) -> str | None:
    """None when ``path`` is a readable ZIP archive whose members' CRC-32 all match."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"not a readable checkpoint archive ({exc})"
    if bad is not None:
        return f"damaged archive (member {bad!r} fails its CRC check)"
    return None


def verify_file(
    path: str | os.PathLike,
    entry: WeightEntry | None = None,
    *,
    sha256: str | None = None,
    size: int | None = None,
    use_stamp: bool = True,
    reporter=None,
) -> str | None:
    """Check a file against ``entry`` (or explicit ``sha256`` / ``size``).

    Returns None when it passes, else a short description of what is wrong. Without a
    SHA-256, a file that is a ZIP archive (or that the entry says should be one) has its
    members' CRC-32 tested. ``use_stamp`` lets a file verified before (same size and
    modification time) skip the hashing; a file that passes a full check gets a stamp
    where the folder is writable.
    """
    path = Path(path)
    if entry is not None:
        sha256 = sha256 or entry.sha256
        size = size if size is not None else entry.size
    if sha256:
        sha256 = sha256.lower()
    if not path.is_file():
        return "file not found"
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"wrong size: {actual_size} bytes, expected {size}"
    if actual_size == 0:
        return "empty file"
    if use_stamp:
        stamp = _read_stamp(path)
        st = path.stat()
        if (
            stamp
            and stamp.get("size") == st.st_size
            and stamp.get("mtime_ns") == st.st_mtime_ns
            and stamp.get("sha256") == sha256
        ):
            return None
    if sha256:
        actual = _sha256_of(path, reporter=reporter)
        if actual != sha256:
            return f"SHA-256 mismatch: {actual}, expected {sha256}"
    else:
        expect_zip = entry.zip_archive if entry is not None else False
        if expect_zip or zipfile.is_zipfile(path):
            problem = _zip_problem(path)
            if problem:
                return problem
    if use_stamp:
        _write_stamp(path, sha256)
    return None


# --------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------
def _say(reporter, message: str, level: str = "info") -> None:
    if reporter is not None:
        reporter.log(message, level=level)
    else:
        print(message if level == "info" else f"{level}: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# resolve
# --------------------------------------------------------------------------------------
def resolve_checkpoint(
    name: str,
    weights_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    reporter=None,
    local_file: str | os.PathLike | None = None,
    *,
    entry: WeightEntry | None = None,
    url: str | Sequence[str] | None = None,
    timeout: float = 30,
) -> Path:
    """The path of a verified copy of checkpoint ``name``.

    ``local_file``: a file (or a folder holding the registry's file name) the user
    brings; it is checked and used in place. ``entry``: a registry entry to use instead
    of ``REGISTRY[name]`` (tests, mirrors, extra checkpoints); ``url``: download from
    this address (or these, in order) instead of the entry's. Downloads happen only when
    ``allow_download`` is true and ``MASKFIELD_OFFLINE`` is not set. Raises
    ``MaskFieldError`` with a message saying which file to put where.
    """
    entry = entry if entry is not None else get_entry(name)
    if url is not None:
        entry = entry.with_url(url)
    folder = _weights_dir(weights_dir)

    if local_file is not None:
        return _resolve_local(entry, Path(local_file).expanduser(), reporter)

    target = folder / entry.filename
    if target.exists():
        problem = verify_file(target, entry, reporter=reporter)
        if problem is None:
            return target
        if not _is_ours(target, weights_dir):
            raise MaskFieldError(
                f"{target} in your weights folder is damaged or not the expected {entry.filename}: {problem}. "
                f"It was left as it is. Replace it with a good copy from {entry.url or 'its publisher'}"
                + (f" (SHA-256 {entry.sha256})" if entry.sha256 else "")
                + ", or move it away and let MaskField download it (online).", kind="weights")
        _discard_cached(target, problem, reporter)

    if not allow_download or not downloads_allowed():
        why = (
            f"downloads are turned off ({ENV_OFFLINE} is set)"
            if not downloads_allowed()
            else "downloads are not allowed (online access is off)"
        )
        raise MaskFieldError(missing_weights_message([entry], folder, reason=f"{entry.filename}: {why}"), kind="weights")
    if not entry.urls:
        raise MaskFieldError(missing_weights_message([entry], folder, reason=f"{entry.filename}: no address known"), kind="weights")

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MaskFieldError(
            f"cannot create the weights folder {folder}: {exc}. Choose another folder with "
            f"{ENV_WEIGHTS_DIR} or the weights folder setting.",
            kind="weights",
        ) from exc

    reasons = []
    for address in entry.urls:
        _say(reporter, f"downloading {entry.description or entry.name} from {address} to {target}")
        try:
            download(address, target, sha256=entry.sha256, size=entry.size, reporter=reporter, timeout=timeout)
        except DownloadError as exc:
            reasons.append(f"{address}: {exc.reason}")
            continue
        if entry.sha256 is None:  # no checksum: test the archive before accepting it
            problem = verify_file(target, entry, reporter=reporter)
            if problem is not None:
                _discard_cached(target, problem, reporter)
                reasons.append(f"{address}: downloaded file is unusable ({problem})")
                continue
        return target
    reason = f"could not download {entry.filename}: " + "; ".join(reasons)
    raise MaskFieldError(missing_weights_message([entry], folder, reason=reason), kind="weights")


def _resolve_local(entry: WeightEntry, path: Path, reporter) -> Path:
    if path.is_dir():
        path = path / entry.filename
    if not path.is_file():
        raise MaskFieldError(
            f"the checkpoint file given for {entry.name} does not exist: {path}. "
            f"Expected {entry.filename} ({entry.description or entry.name}) from {entry.url or 'its publisher'}.",
            kind="weights",
        )
    # A user's file: hash it (no stamp written next to it: their folder is left alone).
    problem = verify_file(path, entry, use_stamp=False, reporter=reporter)
    if problem is not None:
        raise MaskFieldError(
            f"the checkpoint file given for {entry.name} ({path}) is not the expected "
            f"{entry.filename}: {problem}. The file was left as it is; it may be truncated or "
            f"a different model. Get it again from {entry.url or 'its publisher'}.",
            kind="weights",
        )
    return path


def _is_ours(target: Path, weights_dir) -> bool:
    """A file is ours to move aside when it lies in our cache folder (no folder was given), or
    when we downloaded it (its stamp says so). A file in a folder the user gave is theirs."""
    if weights_dir is None:
        return True
    return bool((_read_stamp(target) or {}).get("downloaded"))


def _discard_cached(target: Path, problem: str, reporter) -> Path:
    """Move a damaged file of our cache aside (never delete it: the user may want to look at it)."""
    aside = target.with_name(target.name + ".damaged")
    n = 1
    while aside.exists():
        n += 1
        aside = target.with_name(f"{target.name}.damaged-{n}")
    _remove_stamp(target)
    try:
        os.replace(target, aside)
    except OSError as exc:
        raise MaskFieldError(
            f"the cached checkpoint {target} is unusable ({problem}) and could not be moved aside: {exc}. "
            "Move or delete it by hand.",
            kind="weights",
        ) from exc
    _say(
        reporter,
        f"the cached checkpoint {target} is damaged or incomplete ({problem}); moved it aside to {aside.name} "
        "and fetching it again",
        level="warning",
    )
    return aside


# --------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------
def _opener_for(url: str) -> urllib.request.OpenerDirector:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host in ("127.0.0.1", "localhost", "::1"):
        # a loopback address never goes through a proxy set in the environment
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-999/1000"
    if not value:
        return None
    try:
        unit, rest = value.strip().split(" ", 1)
        if unit.lower() != "bytes":
            return None
        return int(rest.split("-", 1)[0])
    except (ValueError, IndexError):
        return None


class _Bar:
    """A byte progress bar: the reporter's progress events, or tqdm."""

    def __init__(self, reporter, total: int | None, initial: int, desc: str):
        self._progress = None
        self._tqdm = None
        if reporter is not None:
            self._progress = reporter.progress("download", int(total or 0), desc=desc, initial=initial)
        else:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(
                total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, dynamic_ncols=True, leave=False,
            )

    def update(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(n)
        if self._tqdm is not None:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._tqdm is not None:
            self._tqdm.close()


def _hash_existing(part: Path, h, chunk: int) -> int:
    n = 0
    with open(part, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
            n += len(block)
    return n


def _transfer_once(url: str, part: Path, size: int | None, reporter, timeout: float, chunk: int, desc: str):
    """One HTTP request, appending to ``part`` (resuming when it already has bytes).

    Returns (bytes now in ``part``, sha256 object over them, complete?). ``(0, _, False)``
    means the ``.part`` was dropped and the caller should start again. Raises
    ``DownloadError`` for HTTP errors that retrying will not fix, and lets OSError /
    HTTPException through for a cut connection or a timeout.
    """
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = _opener_for(url).open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            # the range starts at or past the server's end: this .part cannot be trusted
            part.unlink()
            return 0, hashlib.sha256(), False
        reason = f"HTTP {exc.code} {exc.reason}"
        raise DownloadError(f"download of {url} failed: {reason}", reason=reason) from exc

    with response:
        status = getattr(response, "status", 200)
        if status not in (200, 206):
            raise DownloadError(f"download of {url} failed: HTTP {status}", reason=f"HTTP {status}")
        h = hashlib.sha256()
        if have:
            if status == 206 and _content_range_start(response.headers.get("Content-Range")) == have:
                _hash_existing(part, h, chunk)  # a true resume: hash what is already there
                mode = "ab"
            elif status == 206:  # a range we did not ask for: drop the .part, start again
                part.unlink()
                return 0, h, False
            else:  # 200: the server ignored Range and sends the whole file
                mode, have = "wb", 0
        else:
            mode = "wb"
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        expected_total = have + length if length is not None else size
        if size is not None and expected_total is not None and expected_total != size:
            reason = f"the server announces {expected_total} bytes, expected {size}"
            raise DownloadError(f"download of {url} failed: {reason}", reason=reason, kind="weights")

        bar = _Bar(reporter, expected_total, have, desc)
        got = have
        try:
            with open(part, mode) as out:
                while True:
                    if reporter is not None:
                        reporter.check_cancel()
                    block = response.read(chunk)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    got += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        complete = expected_total is None or got >= expected_total
        return got, h, complete


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    size: int | None = None,
    reporter=None,
    timeout: float = 30,
    chunk: int = 1 << 20,
    retries: int = 3,
) -> Path:
    """Download ``url`` to ``dest``, safely.

    Data goes to ``dest + '.part'``; an existing ``.part`` is resumed with a Range
    request (a server that ignores Range sends everything and the file starts again).
    A connection cut or timeout mid-file is retried from where it stopped, ``retries``
    times. When the bytes are all there, size and SHA-256 are checked; only then is the
    file renamed to ``dest``. On a mismatch the ``.part`` is deleted and ``DownloadError``
    raised. Other failures raise ``DownloadError`` and keep the ``.part`` for a later
    resume. ``reporter.check_cancel()`` is honoured between chunks (the ``.part`` stays).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    sha256 = sha256.lower() if sha256 else None
    attempts = 0
    restarts = 0
    last_error = ""
    while True:
        try:
            got, h, complete = _transfer_once(url, part, size, reporter, timeout, chunk, dest.name)
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            last_error = _describe_network_error(exc)
            attempts += 1
            if attempts > retries or not part.exists() or part.stat().st_size == 0:
                # nothing arrived (refused, DNS, 404 proxies...) or out of retries
                raise DownloadError(f"download of {url} failed: {last_error}", reason=last_error) from exc
            time.sleep(min(0.2 * attempts, 2.0))
            continue
        if got == 0 and not complete:
            restarts += 1  # the .part was dropped (416, wrong Content-Range): start again
            if restarts > 2:
                raise DownloadError(f"download of {url} failed: the server's ranges are inconsistent",
                                    reason="the server's ranges are inconsistent")
            continue
        if not complete:
            attempts += 1
            last_error = f"connection closed after {got} bytes"
            if attempts > retries:
                raise DownloadError(f"download of {url} failed: {last_error}", reason=last_error)
            time.sleep(min(0.2 * attempts, 2.0))
            continue
        break

    actual_size = part.stat().st_size
    problem = None
    if size is not None and actual_size != size:
        problem = f"size {actual_size} bytes, expected {size}"
    elif sha256 is not None:
        digest = h.hexdigest()
        if digest != sha256:
            problem = f"SHA-256 {digest}, expected {sha256}"
    if problem:
        try:
            part.unlink()
        except OSError:
            pass
        reason = f"the downloaded file failed its check ({problem}); it was deleted"
        raise DownloadError(f"download of {url} failed: {reason}", reason=reason, kind="weights")
    os.replace(part, dest)
    if sha256 is not None:
        _write_stamp(dest, sha256, downloaded=True)
    else:
        _remove_stamp(dest)
    return dest


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        inner = exc.reason
        if isinstance(inner, (socket.timeout, TimeoutError)):
            return "timed out"
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused (no network, or the address is blocked)"
        if isinstance(inner, socket.gaierror):
            return f"cannot resolve the host name (offline?): {inner}"
        return f"network error: {inner}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed mid-file"
    return f"{type(exc).__name__}: {exc}"
