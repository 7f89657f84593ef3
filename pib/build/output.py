"""Output digests: a canonical hash of what a proto area holds.

Every entry is hashed by relative name, type, permission bits and content (a
file's SHA-256, a symlink's target), in sorted order; mtimes, owners and inode
numbers never count, so two builds that write the same bytes have the same
digest. Dependents are keyed by their dependencies' output digests, which is
what lets an unchanged rebuild stop there (early cutoff).

The digest is written `o<FORMAT>:<hex>`. FORMAT is a salt: raising it retires
every equivalence (input key -> output digest) recorded or published before,
e.g. one that turned out to be poisoned.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from pib.artifacts.tarread import link_escape
from pib.fsutil import sha256_file

FORMAT = 1
_PREFIX = f"o{FORMAT}:"


def is_current(digest: object) -> bool:
    """Whether `digest` is an output digest of this format (older ones are never believed)."""
    return isinstance(digest, str) and digest.startswith(_PREFIX) and len(digest) == len(_PREFIX) + 64


def output_digest(proto: Path) -> str:
    """The output digest of the tree at `proto` (an OSError if it cannot be read)."""
    h = hashlib.sha256(f"pib-output-{FORMAT}\0".encode())
    for rel, full in _entries(proto):
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        name = rel.encode("utf-8", "surrogateescape")
        if stat.S_ISLNK(st.st_mode):
            kind, body = b"l", os.fsencode(os.readlink(full))
        elif stat.S_ISDIR(st.st_mode):
            kind, body = b"d", b""
        elif stat.S_ISREG(st.st_mode):
            sha, size = sha256_file(Path(full))
            kind, body = b"f", f"{size}:{sha}".encode()
        else:  # devices, fifos, sockets: by type alone (an archive refuses them anyway)
            kind, body = b"s", str(stat.S_IFMT(st.st_mode)).encode()
        # Length-prefixed fields: no choice of names can make two trees hash alike.
        for part in (name, kind, f"{mode:o}".encode(), body):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return _PREFIX + h.hexdigest()


_SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def refusals(tree: Path, *, most: int = 20) -> list[str]:
    """What in the tree a build left would make its artifact refused on restore (the archive policy of
    pib.artifacts.tarread): a special file, a setuid, setgid or sticky bit, a symlink that is absolute
    or leaves the tree. A proto area holds such things only by mistake or malice: the image takes
    modes and owners from the manifests, and a link out of the tree is a way for a build to make
    steps outside its sandbox (image, pack, a dependent) read the host's files."""
    out: list[str] = []
    links: dict[str, str] = {}
    for rel, full in _entries(tree):
        st = os.lstat(full)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFLNK:
            links[rel] = os.readlink(full)
        elif kind not in (stat.S_IFDIR, stat.S_IFREG):
            out.append(f"{rel}: a {_KIND_NAMES.get(kind, 'special file')}")
        elif st.st_mode & _SPECIAL_BITS:
            out.append(f"{rel}: mode {stat.S_IMODE(st.st_mode):04o} has a setuid, setgid or sticky bit")
    for rel, target in sorted(links.items()):
        why = link_escape(rel, target, links.get)
        if why:
            out.append(why)
    return out[:most]


_KIND_NAMES = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
               stat.S_IFBLK: "block device"}


def _entries(root: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            full = os.path.join(dirpath, name)
            out.append((os.path.relpath(full, root), full))
    out.sort()
    return out
