"""A real Debian archive on disk, made the way Debian makes one, for apt to read through `file:`.

Binary packages are built with `dpkg-deb --build`, indexed with `dpkg-scanpackages`
(dpkg-dev); source packages are listed in a Sources index; a Release file carries
the indexes' SHA-256. apt reads it with `[trusted=yes]` (no signing key in tests).
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from pathlib import Path

ARCH = "amd64"


def build_deb(work: Path, name: str, version: str, payload: dict[str, str]) -> Path:
    """A .deb whose data holds payload (path -> text)."""
    root = work / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {ARCH}\nMaintainer: t <t@example.invalid>\n"
        f"Description: test package {name}\n")
    for rel, text in payload.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    out = work / f"{name}_{version.replace(':', '%3a')}_{ARCH}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)], check=True,
                   capture_output=True)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_archive(repo: Path, suite: str, debs: list[Path],
                 sources: dict[tuple[str, str], dict[str, bytes]] | None = None) -> str:
    """An archive at repo with one suite; returns its `file:` URI."""
    pool = repo / "pool" / "main"
    pool.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        (pool / deb.name).write_bytes(deb.read_bytes())
    dist = repo / "dists" / suite
    bdir = dist / "main" / f"binary-{ARCH}"
    bdir.mkdir(parents=True, exist_ok=True)
    # dpkg-scanpackages wants paths relative to the archive root.
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "pool"], cwd=repo, check=True,
                              capture_output=True).stdout
    (bdir / "Packages").write_bytes(packages)
    (bdir / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    sdir = dist / "main" / "source"
    sdir.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for (name, version), files in (sources or {}).items():
        d = repo / "pool" / "main" / name[0] / name
        d.mkdir(parents=True, exist_ok=True)
        md5, sha = [], []
        for fname, data in files.items():
            (d / fname).write_bytes(data)
            md5.append(f" {hashlib.md5(data).hexdigest()} {len(data)} {fname}")
            sha.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {fname}")
        stanzas.append(f"Package: {name}\nBinary: {name}\nVersion: {version}\nArchitecture: any\n"
                       f"Format: 3.0 (quilt)\nDirectory: pool/main/{name[0]}/{name}\n"
                       "Files:\n" + "\n".join(md5) + "\nChecksums-Sha256:\n" + "\n".join(sha) + "\n")
    src_text = "\n".join(stanzas).encode()
    (sdir / "Sources").write_bytes(src_text)
    (sdir / "Sources.gz").write_bytes(gzip.compress(src_text, mtime=0))
    lines = []
    for f in sorted(p for p in dist.rglob("*") if p.is_file() and p.name != "Release"):
        data = f.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {f.relative_to(dist)}")
    (dist / "Release").write_text(
        f"Suite: {suite}\nCodename: {suite}\nArchitectures: {ARCH}\nComponents: main\n"
        "Date: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n" + "\n".join(lines) + "\n")
    return f"file:{repo}"
