"""The platform image: write the boot archive and the platform outputs from a resolution.

No root is needed: ownership and modes come from the manifests and go straight
into the archive headers; users and groups are looked up in the image's own
etc/passwd and etc/group. Everything is written into a temporary directory
under the output root and renamed into place at the end, so a failed or killed
run leaves no half image behind.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import itertools
import json
import os
import re
import struct
import tarfile
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from pib.config.types import ImageSpec
from pib.errors import ConfigError, Location, PibError, Reason
from pib.fsutil import RUN_TMP, remove_stale, remove_tree, replace_dir, sha256_file, symlink_atomic
from pib.image import cpio
from pib.image.manifest import Kind, Record, check_path, format_image_manifest
from pib.image.resolve import ProtoArea, Resolution, Resolved, SizeBudgetError, SizeReport, resolve, sizes_of
from pib.image.sbom import CDX_FILE, SPDX_FILE, Bill, file_facts, write_sboms
from pib.run import Log, minimal_env, run

_STAMP = re.compile(r"^\d{8}T\d{6}Z$")
PLATFORM_LATEST = "platform-latest"


# --- buildstamps ----------------------------------------------------------------------


def buildstamp(env: Mapping[str, str] | None = None, now: float | None = None) -> str:
    """`YYYYMMDDTHHMMSSZ`, from SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    env = os.environ if env is None else env
    sde = env.get("SOURCE_DATE_EPOCH")
    if sde is not None:
        if not sde.isdigit():
            raise ConfigError(f"SOURCE_DATE_EPOCH={sde!r} is not a number of seconds",
                              hint="set it to an integer, e.g. $(git log -1 --format=%ct)")
        when = float(sde)
    else:
        when = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def stamp_epoch(stamp: str) -> int:
    hint = "use the form 20260101T000000Z (a real date and time, UTC)"
    if not _STAMP.match(stamp):
        raise PibError(f"bad buildstamp {stamp!r}", reason=Reason.IMAGE, hint=hint)
    try:
        return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise PibError(f"bad buildstamp {stamp!r}: not a date", reason=Reason.IMAGE, hint=hint) from None


# --- writing --------------------------------------------------------------------------


class _HashingFile:
    """A file that hashes and counts what goes through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.fh.write(data)


class _GzipSink:
    def __init__(self, out: _HashingFile, level: int) -> None:
        # wbits 31: gzip framing with mtime 0 and no file name, so the bytes are reproducible.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._out = out

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._out.write(self._z.compress(data))
        return len(data)

    def close(self) -> None:
        self._out.write(self._z.flush())


class _ZstdSink:
    def __init__(self, out: _HashingFile, level: int) -> None:
        import zstandard

        # Multi-threaded zstd output does not depend on the number of workers, so it stays reproducible.
        cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
        self._w = cctx.stream_writer(cast(IO[bytes], out), closefd=False, write_size=1 << 20)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._w.write(data)
        return len(data)

    def close(self) -> None:
        self._w.close()  # type: ignore[no-untyped-call]


_CHUNK = 8 << 20


def _read_file(r: Resolved) -> Iterator[bytes]:
    """The file's bytes in chunks; the size must still be what resolution saw."""
    if r.content is not None:
        yield r.content
        return
    assert r.source is not None
    fd = os.open(r.source, os.O_RDONLY)
    try:
        if r.size < _CHUNK:
            # One read of size+1 both fetches the file and proves it has not grown.
            data = os.read(fd, r.size + 1)
            if len(data) != r.size:
                raise _changed(r)
            yield data
            return
        left = r.size
        while left:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                raise _changed(r)
            left -= len(chunk)
            yield chunk
        if os.read(fd, 1):
            raise _changed(r)
    finally:
        os.close(fd)


def _changed(r: Resolved) -> PibError:
    return PibError(f"{r.source} changed size while the image was written", reason=Reason.IMAGE,
                    hint="do not rebuild components while `pib image` runs")


@dataclass
class _Written:
    records: list[Record]
    uncompressed: int


def _owner(r: Resolved) -> tuple[str, str]:
    return f"{r.entry.user}:{r.entry.group}", f"{r.uid}:{r.gid}"


def _link_groups(entries: Sequence[Resolved]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in entries:
        if r.entry.kind is Kind.HARDLINK:
            groups.setdefault(r.entry.target, [r.entry.target]).append(r.entry.path)
    for names in groups.values():
        names.sort(key=str.encode)
    return groups


def _read_whole(r: Resolved) -> bytes:
    """A small file in one read of size+1 bytes, which also proves it has not grown."""
    if r.content is not None:
        return r.content
    assert r.source is not None
    fd = os.open(r.source, os.O_RDONLY)
    try:
        data = os.read(fd, r.size + 1)
    finally:
        os.close(fd)
    if len(data) != r.size:
        raise _changed(r)
    return data


def _load_batch(batch: Sequence[Resolved]) -> list[tuple[bytes, str]]:
    out = []
    for r in batch:
        data = _read_whole(r)
        out.append((data, hashlib.sha256(data).hexdigest()))
    return out


_BATCH = 64   # files per read-ahead task: amortises the cost of a task
_AHEAD = 16   # tasks in flight: bounds the memory read ahead


@contextlib.contextmanager
def _read_ahead(files: Sequence[Resolved], workers: int) -> Iterator[Iterator[tuple[bytes, str]]]:
    """Small files read and hashed by worker threads, in order, a bounded distance ahead.

    os.read and SHA-256 release the GIL, so this overlaps with building the
    stream and with the compressor's own threads.
    """
    if workers <= 0:
        yield ((d, hashlib.sha256(d).hexdigest()) for d in map(_read_whole, files))
        return
    batches = iter([files[i:i + _BATCH] for i in range(0, len(files), _BATCH)])
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pib-read") as pool:
        pending: deque[Future[list[tuple[bytes, str]]]] = deque(
            pool.submit(_load_batch, b) for b in itertools.islice(batches, _AHEAD))

        def results() -> Iterator[tuple[bytes, str]]:
            while pending:
                done = pending.popleft().result()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(pool.submit(_load_batch, nxt))
                yield from done

        try:
            yield results()
        finally:
            for f in pending:
                f.cancel()


def write_cpio(resolution: Resolution, sink: cpio.Sink, mtime: int, read_threads: int = 2) -> _Written:
    """The newc stream in path order, hashing each file while it is copied."""
    entries = resolution.entries
    by_path = {r.entry.path: r for r in entries}
    links = _link_groups(entries)
    carrier = {names[-1]: target for target, names in links.items()}  # newc: the last name carries the data
    ino_of: dict[str, int] = {}
    digests: dict[str, str] = {}
    w = cpio.Writer(sink)
    small = [r for r in entries if r.entry.kind is Kind.FILE and r.entry.path not in links and r.size < _CHUNK]
    with _read_ahead(small, read_threads) as loaded:
        _write_entries(w, entries, by_path, links, carrier, ino_of, digests, loaded, mtime)
    w.finish()
    return _Written(_records(entries, by_path, digests), w.size)


def _write_entries(w: cpio.Writer, entries: Sequence[Resolved], by_path: Mapping[str, Resolved],
                   links: Mapping[str, list[str]], carrier: Mapping[str, str], ino_of: dict[str, int],
                   digests: dict[str, str], loaded: Iterator[tuple[bytes, str]], mtime: int) -> None:
    sha256 = hashlib.sha256
    for ino, r in enumerate(entries, 1):
        e = r.entry
        kind = e.kind
        if kind is Kind.FILE and e.path not in links:
            if r.size < _CHUNK:
                data, digests[e.path] = next(loaded)
                w.file(e.path, data, ino=ino, perm=e.mode, uid=r.uid, gid=r.gid, mtime=mtime)
            else:
                w.file_header(e.path, ino=ino, perm=e.mode, uid=r.uid, gid=r.gid, mtime=mtime, size=r.size)
                h = sha256()
                for chunk in _read_file(r):
                    h.update(chunk)
                    w.data(chunk)
                w.end_data(r.size)
                digests[e.path] = h.hexdigest()
        elif kind is Kind.DIR:
            w.directory(e.path, ino=ino, perm=e.mode, uid=r.uid, gid=r.gid, mtime=mtime)
        elif kind is Kind.SYMLINK:
            w.symlink(e.path, e.target, ino=ino, uid=0, gid=0, mtime=mtime)
        else:
            # A member of a hard-link group: one inode, nlink names, data with the last name only.
            target = by_path[e.target] if kind is Kind.HARDLINK else r
            tpath = target.entry.path
            file_ino = ino_of.setdefault(tpath, ino)
            carries = carrier.get(e.path) == tpath
            size = target.size if carries else 0
            w.file_header(e.path, ino=file_ino, perm=target.entry.mode, uid=target.uid, gid=target.gid,
                          mtime=mtime, size=size, nlink=len(links[tpath]))
            if carries:
                h = sha256()
                for chunk in _read_file(target):
                    h.update(chunk)
                    w.data(chunk)
                w.end_data(size)
                digests[tpath] = h.hexdigest()


def _records(entries: Sequence[Resolved], by_path: Mapping[str, Resolved], digests: Mapping[str, str]) -> list[Record]:
    out: list[Record] = []
    for r in entries:
        e = r.entry
        if e.kind is Kind.DIR:
            out.append(Record(e.path, Kind.DIR, e.mode, *_owner(r)))
        elif e.kind is Kind.SYMLINK:
            out.append(Record(e.path, Kind.SYMLINK, 0o777, "root:root", "0:0", len(e.target.encode()), None, e.target))
        elif e.kind is Kind.FILE:
            out.append(Record(e.path, Kind.FILE, e.mode, *_owner(r), r.size, digests[e.path]))
        else:
            t = by_path[e.target]
            out.append(Record(e.path, Kind.HARDLINK, t.entry.mode, *_owner(t), t.size, digests[e.target], e.target))
    return out


def stage_tree(resolution: Resolution, dest: Path) -> list[Record]:
    """Materialise the image as a directory tree (for archive commands); modes set, owners not."""
    dest.mkdir()
    digests: dict[str, str] = {}
    records: list[Record] = []
    dirs: list[Resolved] = []
    by_path = {r.entry.path: r for r in resolution.entries}
    for r in resolution.entries:
        e = r.entry
        p = dest / e.path
        if e.kind is Kind.DIR:
            p.mkdir()
            dirs.append(r)
            records.append(Record(e.path, Kind.DIR, e.mode, *_owner(r)))
        elif e.kind is Kind.SYMLINK:
            os.symlink(e.target, p)
            records.append(Record(e.path, Kind.SYMLINK, 0o777, "root:root", "0:0", len(e.target.encode()),
                                  None, e.target))
        elif e.kind is Kind.FILE:
            h = hashlib.sha256()
            with open(p, "wb") as out:
                for chunk in _read_file(r):
                    h.update(chunk)
                    out.write(chunk)
            os.chmod(p, e.mode)
            digests[e.path] = h.hexdigest()
            records.append(Record(e.path, Kind.FILE, e.mode, *_owner(r), r.size, digests[e.path]))
    for r in resolution.entries:
        e = r.entry
        if e.kind is Kind.HARDLINK:
            t = by_path[e.target]
            os.link(dest / e.target, dest / e.path)
            records.append(Record(e.path, Kind.HARDLINK, t.entry.mode, *_owner(t), t.size, digests[e.target], e.target))
    for r in reversed(dirs):  # children first, so a read-only directory is filled before it closes
        os.chmod(dest / r.entry.path, r.entry.mode)
    records.sort(key=lambda rec: rec.path.encode())
    return records


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while chunk := fi.read(_CHUNK):
            h.update(chunk)
            fo.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class _LeveledGzip:
    """One gzip member whose deflate level changes per stretch of input.

    Already-compressed files (the boot archive, kernels) are stored rather than
    squeezed again, which would cost seconds and gain nothing; text is deflated.
    Each stretch ends with a sync flush, so the pieces form one valid deflate
    stream (as pigz does). The header has mtime 0 and no name: reproducible.
    """

    def __init__(self, fh: BinaryIO, level: int) -> None:
        self._fh = fh
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")
        self._crc = 0
        self._size = 0
        self._level = level
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15)

    def set_level(self, level: int) -> None:
        if level != self._level:
            self._fh.write(self._z.flush(zlib.Z_SYNC_FLUSH))
            self._z = zlib.compressobj(level, zlib.DEFLATED, -15)
            self._level = level

    def write(self, data: bytes) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._fh.write(self._z.compress(data))
        return len(data)

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        self._fh.write(self._z.flush())
        self._fh.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))


def _level_for(path: Path) -> int:
    """0 (store) when a sample does not compress, else 6."""
    with open(path, "rb") as fh:
        sample = fh.read(256 << 10)
    if len(sample) < 4096:
        return 6
    return 0 if len(zlib.compress(sample, 1)) > 0.9 * len(sample) else 6


PROVENANCE_FILE = "provenance.intoto.jsonl"
# build.json records how a build went (built or restored, timings): it stays
# beside the tarball, whose bytes depend only on the image's inputs. The
# provenance names the tarball's digest, so it cannot be inside it.
_NOT_IN_TARBALL = frozenset({"build.json", PROVENANCE_FILE})

# Signs the provenance: (platform directory, subjects as (name, sha256)) -> the
# provenance file's bytes. pib.build supplies it (signing keys live above pib.image).
Attest = Callable[[Path, Sequence[tuple[str, str]]], bytes]


def _write_tgz(src_dir: Path, arc_root: str, dest: Path, mtime: int) -> None:
    """A reproducible tarball: sorted names, fixed owners and times."""
    with open(dest, "wb") as raw:
        gz = _LeveledGzip(raw, 6)
        with tarfile.TarFile(fileobj=cast(IO[bytes], gz), mode="w", format=tarfile.PAX_FORMAT,
                             copybufsize=1 << 20) as tar:
            def info(name: str, mode: int, kind: bytes, size: int = 0) -> tarfile.TarInfo:
                ti = tarfile.TarInfo(name)
                ti.mode, ti.type, ti.size, ti.mtime = mode, kind, size, mtime
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = "root"
                return ti
            tar.addfile(info(arc_root, 0o755, tarfile.DIRTYPE))
            for p in sorted(src_dir.iterdir(), key=lambda x: x.name.encode()):
                if p.name in _NOT_IN_TARBALL:
                    continue
                size = p.stat().st_size
                gz.set_level(_level_for(p))
                with open(p, "rb") as fh:
                    tar.addfile(info(f"{arc_root}/{p.name}", 0o644, tarfile.REGTYPE, size), fh)
                gz.set_level(6)
        gz.close()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


@dataclass(frozen=True)
class ImageResult:
    dir: Path
    boot_archive: Path
    hash: str                 # SHA-256 of the boot archive
    size: int                 # bytes of the boot archive
    uncompressed_size: int    # bytes of the cpio stream (0 for archive commands)
    tarball: Path
    latest: Path
    buildstamp: str
    kernels: tuple[Path, ...]
    entries: int
    warnings: tuple[str, ...]
    sizes: SizeReport
    timings: Mapping[str, float] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)  # sbom and provenance files by kind


def _format_argv(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    out = []
    for arg in argv:
        try:
            out.append(arg.format_map(values))
        except (KeyError, ValueError, IndexError) as exc:
            raise ConfigError(f"image.archive_command argument {arg!r} has an unknown placeholder ({exc})",
                              hint="placeholders: {staged} {output} {manifest} {buildstamp}") from exc
    return out


def _cannot_write(output_root: Path, exc: OSError) -> PibError:
    """A full disk or an unwritable output directory: a user's problem, not a bug."""
    return PibError(f"cannot write the image under {output_root}: {exc.strerror or exc}", reason=Reason.IMAGE,
                    hint="free space there, make it writable (or set workspace.output_dir), then run pib build again")


def assemble(
    spec: ImageSpec,
    areas: Sequence[ProtoArea],
    output_root: Path,
    buildstamp: str,
    build_info: Mapping[str, Any] | None = None,
    *,
    component_keys: Mapping[str, str] | None = None,
    log: Log | None = None,
    bill: Bill | None = None,
    attest: Attest | None = None,
) -> ImageResult:
    """Build output_root/platform-<buildstamp>/ plus its tarball and the platform-latest link."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    mtime = stamp_epoch(buildstamp)
    resolution = resolve(spec, areas, buildstamp=buildstamp, component_keys=component_keys)
    timings["resolve"] = time.monotonic() - t0

    name = f"platform-{buildstamp}"
    try:
        output_root.mkdir(parents=True, exist_ok=True)
        remove_stale(output_root)
        tmp = Path(tempfile.mkdtemp(prefix=f"{RUN_TMP}{os.getpid()}-", dir=output_root))
    except OSError as exc:
        raise _cannot_write(output_root, exc) from exc
    tgz_tmp = tmp.with_name(tmp.name + ".tgz")
    try:
        pdir = tmp / name
        pdir.mkdir()
        archive = pdir / "boot_archive"
        t = time.monotonic()
        if spec.archive_command:
            staged = tmp / "staged"
            records = stage_tree(resolution, staged)
            manifest_file = pdir / "boot_archive.manifest"
            _write_text(manifest_file, format_image_manifest(records))
            argv = _format_argv(spec.archive_command, {"staged": str(staged), "output": str(archive),
                                                       "manifest": str(manifest_file), "buildstamp": buildstamp})
            run(argv, cwd=tmp, env=minimal_env({"SOURCE_DATE_EPOCH": str(mtime)}), log=log,
                reason=Reason.IMAGE, what="image archive command")
            if not archive.is_file():
                raise PibError(f"the archive command did not write {archive}", reason=Reason.IMAGE,
                               where=spec.where, hint="write the boot archive to the {output} path")
            digest, size = sha256_file(archive)
            uncompressed = 0
            remove_tree(staged)
        else:
            with open(archive, "wb") as fh:
                hf = _HashingFile(fh)
                sink: _ZstdSink | _GzipSink
                if spec.compression == "zstd":
                    sink = _ZstdSink(hf, 3)
                elif spec.compression == "gzip":
                    sink = _GzipSink(hf, 6)
                else:
                    raise ConfigError(f"unknown compression {spec.compression!r}", where=spec.where,
                                      hint="use zstd or gzip")
                written = write_cpio(resolution, sink, mtime)
                sink.close()
            records, uncompressed = written.records, written.uncompressed
            digest, size = hf.hash.hexdigest(), hf.size
            _write_text(pdir / "boot_archive.manifest", format_image_manifest(records))
        timings["boot_archive"] = time.monotonic() - t

        report = sizes_of(resolution, archive_size=size, max_size=spec.max_size)
        if spec.max_size is not None and size > spec.max_size:
            raise SizeBudgetError(report)

        kernels = []
        kernel_facts = []
        area_by_name = {a.name: a for a in areas}
        for k in spec.kernels:
            check_path(k.path, spec.where or Location("<image>"), "image.kernel path")
            area = area_by_name.get(k.component)
            src = area.path / k.path if area is not None else None
            if area is None or src is None or not src.is_file():
                raise PibError(f"kernel {k.component}:{k.path} not found" + (f" at {src}" if src else ""),
                               reason=Reason.IMAGE, where=spec.where,
                               hint="build that component, or fix image.kernel in pib.toml")
            src = src.resolve()
            if not src.is_relative_to(area.path.resolve()):  # a link out of the proto area: a host file
                raise PibError(f"kernel {k.component}:{k.path} leads outside its proto area (to {src})",
                               reason=Reason.IMAGE, where=spec.where, hint=f"build {k.component} again")
            dst = pdir / k.out_name
            kdigest, ksize = _copy_hashed(src, dst)
            kernels.append(Path(output_root / name / k.out_name))
            kernel_facts.append({"name": k.out_name, "component": k.component, "path": k.path,
                                 "sha256": kdigest, "size": ksize})

        _write_text(pdir / "boot_archive.hash", digest + "\n")
        outputs: dict[str, str] = {}
        if bill is not None:
            t = time.monotonic()
            write_sboms(pdir, bill, file_facts(resolution, records), image=name, epoch=mtime,
                        boot_archive_sha256=digest)
            outputs = {"spdx": SPDX_FILE, "cyclonedx": CDX_FILE}
            if attest is not None:
                outputs["provenance"] = PROVENANCE_FILE
            timings["sbom"] = time.monotonic() - t
        info = dict(build_info or {})
        info["image"] = {
            "buildstamp": buildstamp,
            "source_date_epoch": mtime,
            "format": "command" if spec.archive_command else f"cpio-newc+{spec.compression}",
            "boot_archive": {"file": "boot_archive", "sha256": digest, "size": size,
                             "uncompressed_size": uncompressed, "entries": len(resolution.entries)},
            "kernels": kernel_facts,
            "release_file": spec.release_file or None,
            "max_size": spec.max_size,
            "archive_command": list(spec.archive_command) if spec.archive_command else None,
            "search_path": [n for n, _ in resolution.search],
            "sizes": {c.name: c.bytes for c in report.components},
            "outputs": outputs,
        }
        _write_text(pdir / "build.json", json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")

        t = time.monotonic()
        _write_tgz(pdir, name, tgz_tmp, mtime)
        timings["tarball"] = time.monotonic() - t
        if attest is not None:
            subjects = [(p.name, sha256_file(p)[0]) for p in sorted(pdir.iterdir(), key=lambda x: x.name.encode())
                        if p.name not in _NOT_IN_TARBALL]
            subjects.append((f"{name}.tgz", sha256_file(tgz_tmp)[0]))
            _write_text(pdir / PROVENANCE_FILE, attest(pdir, subjects).decode())

        final = output_root / name
        tgz = output_root / f"{name}.tgz"
        replace_dir(pdir, final)  # an older image with the same stamp is replaced in one step
        os.replace(tgz_tmp, tgz)
        latest = output_root / PLATFORM_LATEST
        symlink_atomic(name, latest)
    except BaseException as exc:
        remove_tree(tmp)
        with contextlib.suppress(FileNotFoundError):
            tgz_tmp.unlink()
        if isinstance(exc, OSError):
            raise _cannot_write(output_root, exc) from exc
        raise
    remove_tree(tmp)
    timings["total"] = time.monotonic() - t0
    return ImageResult(final, final / "boot_archive", digest, size, uncompressed, tgz, latest, buildstamp,
                       tuple(kernels), len(resolution.entries), resolution.warnings, report, timings, outputs)
