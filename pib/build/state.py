"""What the workspace last built: one record per component under .pib/state/.

A record holds the input key and document of the last successful build or
restore, the output digest of what it made (a local equivalence: this key
gave that output), and what the proto area held then: every path with its size, mtime
and mode (a stat per file, no hashing, like the CBE install record), so a
deleted, added or edited file makes the component stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from pib.errors import local_error
from pib.fsutil import json_record, read_json_record, read_record, set_aside, write_atomic


class ProtoFingerprint(NamedTuple):
    inode: int
    mtime_ns: int
    entries: int

    @classmethod
    def of(cls, proto: Path) -> ProtoFingerprint | None:
        try:
            st = os.stat(proto)
            entries = len(os.listdir(proto))
        except OSError:
            return None
        return cls(st.st_ino, st.st_mtime_ns, entries)


Files = dict[str, list[int]]  # relative path -> [size, mtime_ns, mode]


def scan(proto: Path) -> Files | None:
    """What a proto area holds, by lstat (None when it is missing)."""
    if not proto.is_dir():
        return None
    out: Files = {}
    # os.scandir with relative names built as it goes: os.walk plus relpath cost more than the lstat.
    pending = [(str(proto), "")]
    while pending:
        top, rel = pending.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for e in entries:
            name = rel + e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                # A directory's mtime follows its entries, which are compared one by one.
                out[name] = [0, 0, st.st_mode]
                pending.append((e.path, name + "/"))
            else:
                out[name] = [st.st_size if st.st_mtime_ns else 0, st.st_mtime_ns, st.st_mode]  # as records always had
    return out


class Record(NamedTuple):
    component: str
    key: str
    doc: dict[str, Any]
    action: str  # a pib.build.runner.State: built | restored
    finished: float
    seconds: float
    proto: ProtoFingerprint | None
    dirty: bool = False
    store: str | None = None
    files: Files | None = None  # None in records written before pib recorded the files
    output: str | None = None  # output digest of the proto area (pib.build.output); None in older records
    head: str | None = None  # the commit built (None: unknown, in records written before pib kept it)

    def proto_changes(self, proto: Path) -> list[str] | None:
        """Paths that differ from what the proto area held when recorded ([]: intact, None: missing)."""
        if self.files is None:  # an older record: the cheap fingerprint is all there is
            now = ProtoFingerprint.of(proto)
            if now is None:
                return None
            return [] if now.entries > 0 and now == self.proto else ["."]
        held = scan(proto)
        if held is None:
            return None
        return sorted(p for p in set(held) | set(self.files) if held.get(p) != self.files.get(p))


def _path(state_dir: Path, name: str) -> Path:
    return state_dir / "state" / f"{name}.json"


RECORD_LIMIT = 256 << 20  # a record lists every path of a proto area: large, but not without bound

# Corrupt records seen by load(), set aside by the next set_aside_corrupt() (a build, which holds the
# workspace lock; read-only commands only treat them as "not built").
_corrupt: dict[Path, str] = {}
_corrupt_lock = threading.Lock()


def load(state_dir: Path, name: str) -> Record | None:
    path = _path(state_dir, name)
    try:
        return _record(read_json_record(path, RECORD_LIMIT))
    except OSError:
        return None  # a missing or unreadable record means "not built"
    except ValueError as exc:
        with _corrupt_lock:
            _corrupt[path] = str(exc)
        return None


# A pickle of {component: (SHA-256 of its record's bytes, the Record parsed from them)}: a no-op plan reads
# every record's bytes, but parses and checks only those whose bytes changed. Keyed by the bytes, not
# their stat data, and by the code that parses them; a torn or foreign cache is a miss.
_CACHE_NAME = "records-cache"
_CACHE_FORMAT = b"pib-records-cache 1\n"
_CACHE_LIMIT = 1 << 30
_CODE: list[bytes] = []


def _cache_head() -> bytes:
    if not _CODE:
        import sys

        from pib import fsutil

        h = hashlib.sha256(_CACHE_FORMAT + sys.version.encode())
        for mod in (__file__, fsutil.__file__):
            with contextlib.suppress(OSError, TypeError):
                h.update(Path(mod or "").read_bytes())
        _CODE.append(_CACHE_FORMAT + h.digest())
    return _CODE[0]


def _read_cache(path: Path) -> dict[str, tuple[bytes, Record]]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_CACHE_LIMIT + 1)
        head = _cache_head()
        if len(raw) > _CACHE_LIMIT or raw[:len(head)] != head:
            return {}
        got = pickle.loads(raw[len(head):])
    except Exception:  # a torn or foreign cache is a miss, never an error
        return {}
    if not isinstance(got, dict) or not all(
            isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], Record) for v in got.values()):
        return {}
    return got


def load_all(state_dir: Path, names: Iterable[str]) -> dict[str, Record | None]:
    """load() of each named component, parsing only the records whose bytes are not in the cache."""
    where = state_dir / _CACHE_NAME
    cached = _read_cache(where)
    out: dict[str, Record | None] = {}
    changed = False
    for name in names:
        path = _path(state_dir, name)
        try:
            raw = read_record(path, RECORD_LIMIT)
            digest = hashlib.sha256(raw).digest()
            hit = cached.get(name)
            if hit is not None and hit[0] == digest:
                out[name] = hit[1]
                continue
            out[name] = rec = _record(json_record(raw))
            cached[name] = (digest, rec)
            changed = True
        except OSError:
            out[name] = None  # a missing or unreadable record means "not built"
        except ValueError as exc:
            with _corrupt_lock:
                _corrupt[path] = str(exc)
            out[name] = None
    if changed:
        with contextlib.suppress(OSError, pickle.PicklingError):
            write_atomic(where, _cache_head() + pickle.dumps(cached, protocol=pickle.HIGHEST_PROTOCOL))
    return out


def set_aside_corrupt(state_dir: Path) -> list[str]:
    """Set aside the corrupt records load() met under `state_dir` (the components are then simply
    built again); one warning each."""
    out: list[str] = []
    with _corrupt_lock:
        mine = [p for p in _corrupt if p.is_relative_to(state_dir)]
        found = [(p, _corrupt.pop(p)) for p in mine]
    for path, why in found:
        try:
            dest = set_aside(path)
        except OSError as exc:
            out.append(f"build record {path} is corrupt ({why}) and could not be set aside ({exc.strerror})")
            continue
        out.append(f"build record {path} was corrupt ({why}); set aside as {dest.name}, so "
                   f"{path.stem} is built again")
    return out


_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {  # name -> (types, may be null)
    "component": (str, False), "key": (str, False), "doc": (dict, False), "action": (str, False),
    "finished": ((int, float), False), "seconds": ((int, float), False), "proto": (dict, True),
    "dirty": (bool, False), "store": (str, True), "files": (dict, True), "output": (str, True),
    "head": (str, True),
}


def _record(data: Any) -> Record:
    """A record from its JSON, every field checked (ValueError): what pib wrote, or nothing."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    for k, v in data.items():
        if k not in _FIELDS:
            raise ValueError(f"unknown field {k!r}")
        types, nullable = _FIELDS[k]
        if (v is None and not nullable) or (v is not None and (not isinstance(v, types) or
                                                                isinstance(v, bool) is not (types is bool))):
            raise ValueError(f"field {k!r} has the wrong type")
    missing = [k for k in ("component", "key", "doc", "action", "finished", "seconds") if k not in data]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    fp = data.get("proto")
    files = data.get("files")
    if fp is not None and (set(fp) != set(ProtoFingerprint._fields) or not all(_is_int(x) for x in fp.values())):
        raise ValueError("field 'proto' is malformed")
    if files is not None and not all(isinstance(v, list) and len(v) == 3 and all(_is_int(x) for x in v)
                                     for v in files.values()):
        raise ValueError("field 'files' is malformed")
    return Record(**{**data, "proto": ProtoFingerprint(**fp) if fp else None})


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def save(state_dir: Path, rec: Record) -> None:
    path = _path(state_dir, rec.component)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**rec._asdict(), "proto": rec.proto._asdict() if rec.proto else None},
                                      indent=1, sort_keys=True))
    except OSError as exc:
        raise local_error(path, exc, "record the build in") from None


def forget(state_dir: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(state_dir, name).unlink()


def now() -> float:
    return time.time()


def recorded_keys(state_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """Keys of the last successful build or restore of each named component that has one."""
    out: dict[str, str] = {}
    for name in names:
        rec = load(state_dir, name)
        if rec is not None:
            out[name] = rec.key
    return out
