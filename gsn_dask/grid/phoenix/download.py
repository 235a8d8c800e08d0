"""Resumable, checksummed downloader of PHOENIX HiRes files (wavelength file and spectra)."""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import _open_primary
from .names import (
    DEFAULT_URL,
    MANIFEST_NAME,
    WAVE_FILENAME,
    LabelRange,
    PhoenixFileError,
    check_grid_point,
    grid_points,
    relative_path,
)

log = logging.getLogger(__package__)  # 'gsn_dask.grid.phoenix', as before the split



# ---------------------------------------------------------------------------- downloader
class _Retryable(Exception):
    """A transient failure worth retrying (dropped connection, short body, 5xx)."""


@dataclass
class DownloadReport:
    """What :func:`download_grid` did. Paths are relative to ``dest_root`` (POSIX)."""

    dest_root: str
    base_url: str
    requested: list[str] = field(default_factory=list)
    downloaded: list[str] = field(default_factory=list)  # fetched in this run (incl. re-downloads)
    skipped: list[str] = field(default_factory=list)  # already complete (checksum ok)
    redownloaded: list[str] = field(default_factory=list)  # checksum mismatch -> fetched again
    resumed: list[str] = field(default_factory=list)  # continued a .part file with an HTTP Range request
    missing: list[str] = field(default_factory=list)  # HTTP 404: the server lacks this grid node
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) after all retries
    bytes_downloaded: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing failed (404s are reported, not failures)."""
        return not self.failed

    def summary(self) -> str:
        s = (
            f"PHOENIX download to {self.dest_root}: {len(self.requested)} files requested, "
            f"{len(self.downloaded)} downloaded ({self.bytes_downloaded / 1e6:.1f} MB"
            f"{f', {len(self.resumed)} resumed' if self.resumed else ''}"
            f"{f', {len(self.redownloaded)} re-downloaded after a checksum mismatch' if self.redownloaded else ''}), "
            f"{len(self.skipped)} already complete, {len(self.missing)} not on the server (404), "
            f"{len(self.failed)} failed"
        )
        if self.failed:
            s += "\n" + "\n".join(f"  FAILED {p}: {r}" for p, r in self.failed[:20])
        if self.missing:
            s += "\n" + "\n".join(f"  404 {p}" for p in self.missing[:20])
            if len(self.missing) > 20:
                s += f"\n  ... and {len(self.missing) - 20} more"
        return s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class Manifest:
    """``MANIFEST.sha256`` in ``sha256sum`` format (``<hex>  <relative path>``), so
    ``sha256sum -c MANIFEST.sha256`` works from ``dest_root``. Appended as files complete
    (later lines win), compacted at the end of a run."""

    def __init__(self, root: Path):
        self.path = Path(root) / MANIFEST_NAME
        self._lock = threading.Lock()
        self.entries: dict[str, str] = {}
        if self.path.exists():
            for i, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                m = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.strip())
                if not m:
                    if line.strip():
                        log.warning("%s line %d is not '<sha256>  <path>'; ignored", self.path, i)
                    continue
                self.entries[m[2]] = m[1].lower()

    def get(self, rel: str) -> str | None:
        return self.entries.get(rel)

    def record(self, rel: str, digest: str) -> None:
        with self._lock:
            self.entries[rel] = digest
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(f"{digest}  {rel}\n")

    def forget(self, rel: str) -> None:
        with self._lock:
            self.entries.pop(rel, None)

    def compact(self) -> None:
        with self._lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(f"{d}  {r}\n" for r, d in sorted(self.entries.items())), encoding="utf-8")
            os.replace(tmp, self.path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while buf := fh.read(chunk):
            h.update(buf)
    return h.hexdigest()


def _fits_problem(path: Path) -> str | None:
    """None if ``path`` is a complete FITS file whose primary HDU data read in full, else why not."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(80)
        if not head.startswith(b"SIMPLE  ="):
            return f"not a FITS file (starts with {head[:40]!r})"
        if path.stat().st_size % 2880:
            return f"size {path.stat().st_size} B is not a multiple of 2880 (truncated FITS)"
        _open_primary(path, "file", catch_warnings=False)
    except PhoenixFileError as exc:
        return str(exc)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}
_RETRY_EXC = (
    _Retryable,
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


def _user_agent() -> str:
    try:
        from ..._version import __version__
    except Exception:  # noqa: BLE001
        __version__ = "?"
    return f"gsn-dask/{__version__} (PHOENIX grid downloader; python-urllib)"


def _fetch_to_part(url: str, part: Path, *, timeout: float, stats: dict[str, Any], chunk: int = 1 << 16) -> None:
    """Download ``url`` into ``part``, continuing an existing ``part`` with an HTTP Range request.

    Adds the bytes received to ``stats["bytes"]`` as they arrive and sets ``stats["resumed"]``
    when a Range resume was used. A short body raises :class:`_Retryable` and keeps what arrived
    in ``part`` for the next try.
    """
    offset = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.build_opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our .part is no prefix the server recognises: start over
            part.unlink(missing_ok=True)
            raise _Retryable(f"HTTP 416 for a resume at byte {offset}; restarting from scratch") from exc
        raise
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        expect = int(length) if length is not None and length.isdigit() else None
        total = expect
        if offset and status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m[1]) != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server answered a resume at {offset} with Content-Range {resp.headers.get('Content-Range')!r}")
            total = int(m[3]) if m[3] != "*" else None
            mode = "ab"
            stats["resumed"] = True
        else:
            if offset:
                log.info("%s: server ignored the Range request; downloading again from the start", url)
            mode, offset = "wb", 0
        got = 0
        with open(part, mode) as fh:
            while True:
                buf = resp.read1(chunk)
                if not buf:
                    break
                fh.write(buf)
                got += len(buf)
                stats["bytes"] += len(buf)
        if expect is not None and got < expect:
            raise _Retryable(f"connection closed after {offset + got} of {offset + expect} bytes")
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink(missing_ok=True)
        raise _Retryable(f"downloaded size {size} B differs from the server's {total} B; restarting")


def _download_one(
    rel: str,
    dest_root: Path,
    base_url: str,
    manifest: Manifest,
    *,
    verify: bool,
    retries: int,
    backoff: float,
    timeout: float,
) -> dict[str, Any]:
    """Make ``dest_root/rel`` a complete copy of ``base_url + rel``. Never raises; returns a status dict."""
    dest = dest_root / rel
    res: dict[str, Any] = {"rel": rel, "status": "", "bytes": 0, "resumed": False, "redownloaded": False, "reason": ""}
    if dest.exists():
        recorded = manifest.get(rel)
        if recorded is not None:
            if not verify or sha256_file(dest) == recorded:
                res["status"] = "skipped"
                return res
            log.warning("%s: sha256 differs from %s; downloading it again", dest, manifest.path.name)
            res["redownloaded"] = True
        else:
            problem = _fits_problem(dest)
            if problem is None:  # complete file from an earlier tool or an interrupted run: adopt it
                manifest.record(rel, sha256_file(dest))
                res["status"] = "skipped"
                return res
            log.warning("%s is incomplete (%s); downloading it again", dest, problem)
        dest.unlink()
        manifest.forget(rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = base_url.rstrip("/") + "/" + urllib.parse.quote(rel, safe="/=+-.")
    for attempt in range(retries + 1):
        try:
            _fetch_to_part(url, part, timeout=timeout, stats=res)
            problem = _fits_problem(part)
            if problem is not None:
                part.unlink(missing_ok=True)
                res.update(status="failed", reason=f"server sent something that is not a complete FITS file: {problem}")
                return res
            os.replace(part, dest)
            manifest.record(rel, sha256_file(dest))
            res["status"] = "downloaded"
            return res
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                res.update(status="missing", reason=f"HTTP 404 Not Found: {url}")
                return res
            reason = f"HTTP {exc.code} {exc.reason}: {url}"
            if exc.code not in _RETRY_HTTP:
                res.update(status="failed", reason=reason)
                return res
        except urllib.error.URLError as exc:  # DNS failure, connection refused, ...
            reason = f"network error for {url}: {exc.reason}"
        except _RETRY_EXC as exc:
            reason = f"{type(exc).__name__}: {exc} ({url})"
        except OSError as exc:  # local disk problems are not worth retrying
            res.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            return res
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the whole download
            res.update(status="failed", reason=f"unexpected {type(exc).__name__}: {exc} ({url})")
            return res
        if attempt < retries:
            wait = backoff * (2**attempt)
            log.info("%s: %s; retry %d/%d in %.1f s", rel, reason, attempt + 1, retries, wait)
            if wait > 0:
                time.sleep(wait)
    res.update(status="failed", reason=f"{reason} (gave up after {retries + 1} tries; rerun to resume)")
    return res


def download_grid(
    dest_root: str | Path,
    *,
    teff: LabelRange = None,
    logg: LabelRange = None,
    feh: LabelRange = None,
    alpha_fe: LabelRange = 0.0,
    points: Iterable[Mapping[str, float]] | None = None,
    base_url: str = DEFAULT_URL,
    workers: int = 4,
    progress: bool = True,
    verify: bool = True,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
) -> DownloadReport:
    """Download the WAVE file and every spectrum of a sub-grid into ``dest_root``, mirroring the
    server's layout below ``base_url`` (so ``dest_root`` plays the part of ``HiResFITS/``).

    Label ranges as in :func:`grid_points` (``alpha_fe`` defaults to 0.0), or explicit ``points``
    (label dicts). Resumable: complete files whose sha256 matches ``MANIFEST.sha256`` are skipped
    (``verify=False`` skips the hashing), a mismatch is downloaded again; downloads go to
    ``*.part`` and are renamed when complete; an existing ``.part`` is continued with an HTTP
    Range request when the server supports it. Transient network errors are retried ``retries``
    times with exponential backoff (``backoff`` s, doubling). A grid node the server lacks
    (HTTP 404) is reported in ``missing``, not fatal. Never raises for a single file; see the
    returned :class:`DownloadReport` (``report.ok``).
    """
    from tqdm.auto import tqdm

    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    if points is None:
        points = grid_points(teff=teff, logg=logg, feh=feh, alpha_fe=alpha_fe)
    rels = [WAVE_FILENAME]
    for p in points:
        check_grid_point(p["teff"], p["logg"], p["feh"], p.get("alpha_fe", 0.0))
        rels.append(relative_path(p["teff"], p["logg"], p["feh"], p.get("alpha_fe", 0.0)))
    rels = list(dict.fromkeys(rels))
    report = DownloadReport(dest_root=str(dest_root), base_url=base_url, requested=rels)
    manifest = Manifest(dest_root)
    kw = dict(verify=verify, retries=max(0, int(retries)), backoff=float(backoff), timeout=float(timeout))

    def collect(res: dict[str, Any]) -> None:
        rel, status = res["rel"], res["status"]
        report.bytes_downloaded += res["bytes"]
        if res["resumed"]:
            report.resumed.append(rel)
        if status == "downloaded":
            report.downloaded.append(rel)
            if res["redownloaded"]:
                report.redownloaded.append(rel)
        elif status == "skipped":
            report.skipped.append(rel)
        elif status == "missing":
            log.warning("PHOENIX server has no %s (HTTP 404); skipped", rel)
            report.missing.append(rel)
        else:
            log.error("PHOENIX download failed: %s: %s", rel, res["reason"])
            report.failed.append((rel, res["reason"]))

    bar = tqdm(total=len(rels), desc="PHOENIX download", unit="file", disable=not progress)
    try:
        # the WAVE file first, alone: without it nothing else is usable
        collect(_download_one(rels[0], dest_root, base_url, manifest, **kw))
        bar.update(1)
        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            futures = [pool.submit(_download_one, rel, dest_root, base_url, manifest, **kw) for rel in rels[1:]]
            for fut in as_completed(futures):
                collect(fut.result())
                bar.update(1)
                bar.set_postfix(MB=f"{report.bytes_downloaded / 1e6:.1f}", missing=len(report.missing), failed=len(report.failed))
    finally:
        bar.close()
        manifest.compact()
    for lst in (report.downloaded, report.skipped, report.redownloaded, report.resumed, report.missing):
        lst.sort()
    report.failed.sort()
    log.info(report.summary())
    return report

