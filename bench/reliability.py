"""Run the fault tests and write docs/reliability.md from what they record.

    python3 bench/reliability.py [--fuzz-examples N]   (default 10000)

Each fault case in the test files FAMILIES names
appends (family, case, tried, passed) to a JSON-lines file under
PIB_RELIABILITY_DIR (see tests/reliability.py); this script sets that
variable, runs those tests with pytest, and turns the lines into the table.
A case that fails records passed < tried; a test that errors before it
reaches its case is counted from pytest's own report, so nothing is hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import ROOT, machine

FAMILIES = {
    "kill": ("tests/test_kill.py", "SIGKILL at a point of a build, pack, restore, image or CBE install; "
                                   "nothing half in place, next run gives the clean image"),
    "hostile": ("tests/test_hostile.py", "crafted artifact in the store under the component's key; refused "
                                         "(reason verify), nothing outside touched, built locally"),
    "hostile build": ("tests/test_hostile_build.py tests/test_hostile_output.py tests/test_hostile_git.py",
                      "a sandboxed build leaves a link to the machine key (file, directory, relative, chained, "
                      "the kernel), a fifo, a socket or a setuid, setgid or sticky bit: refused (reason build), "
                      "nothing put in place, kept or imaged, the key nowhere; escape sequences in a log tail, an "
                      "HTTP reason phrase or an unverified key document reach the terminal escaped; core.ignorecase "
                      "in a repository's config, a committed .gitattributes that converts line endings or a "
                      "filter driver in .git/config hides no edit from the key and runs nothing; ignored files "
                      "and nested repositories are out of sight of read-only and writable_source builds"),
    "hostile store": ("tests/test_hostile_store.py tests/test_hostile_redirect.py",
                      "local store metadata that is a fifo or a link to /dev/zero; an HTTP store that redirects "
                      "(301, 302, 307 off its origin, to file://, in a loop) or sends a gzip bomb as metadata or "
                      "archive: within seconds a store warning and a local build, nothing followed or inflated; "
                      "SIGTERM while a store never answers: exit 130 within seconds"),
    "hostile image": ("tests/test_sbom.py", "pib verify of an image with a truncated boot archive, a lying hash "
                                            "file, a symlink out of it or to a fifo, a fifo, a huge file, a "
                                            "tarball member declaring 16 GiB: a verify error within seconds, "
                                            "nothing outside the image read"),
    "signal": ("tests/test_signal.py", "SIGTERM or SIGINT to pib alone at a point of a build, restore, image, "
                                       "publish, CBE install or clobber (its handlers run); exit 130 soon, "
                                       "nothing half in place, next run gives the clean image"),
    "outage": ("tests/test_outage.py", "store down, killed mid-transfer or misbehaving; bounded time, "
                                       "warning, local build"),
    "concurrency": ("tests/test_concurrency.py", "4 simultaneous builds sharing stores; images right, "
                                                 "every entry verifies"),
    "fuzz": ("tests/test_fuzz.py tests/test_fuzz_state.py",
             "hypothesis examples against the manifest, config and CBE lock parsers, the build and image "
             "records, store metadata, and pib build (pib.cli.main) over fuzzed records, index files and "
             "pib.toml values; only pib's own errors, nothing half-written"),
    "diskfull": ("tests/test_diskfull.py", "a full file system (tmpfs) under restore, image and store; "
                                           "clear error, nothing half-written kept"),
    "tar parser": ("tests/test_archive.py", "hand-built tar headers GNU tar reads differently (leading NULs, "
                                            "long names with hidden bytes, special types and bits), with the "
                                            "writing thread and with the forked writer; refused, nothing "
                                            "written"),
    "forked writer": ("tests/test_unpack_process.py", "the process that writes large archives: a write the file "
                                                      "system refuses, SIGKILL to pib mid-unpack, SIGTERM or "
                                                      "SIGHUP to the writer; the error or an interruption, "
                                                      "nothing in place, no process left behind"),
    "metadata": ("tests/test_artifacts.py", "malformed store metadata (deep nesting, huge integers, 1e999, "
                                            "wrong types) and two interleaved publishes of one key; a verify "
                                            "problem, never a crash, and every entry verifies"),
    "transfer": ("tests/test_store_http.py tests/test_store_s3.py",
                 "a server dripping headers or an archive, or sending an endless body (HTTP and S3, existence "
                 "checks and GETs); cut off at a deadline and at the size the signed metadata states"),
    "trust": ("tests/test_publish.py", "pib ci with an entry signed only by the machine key; never "
                                       "republished under the publishing key"),
    "bad state": ("tests/test_badstate.py", "pib's own files corrupt, of the wrong type, read-only, full or "
                                            "without a free inode; a corrupt record is set aside and rebuilt "
                                            "with a warning, the rest is an error naming the path (exit 18, "
                                            "or image), and the next build gives the clean image"),
    "bad config": ("tests/test_badconfig.py", "hostile pib.toml values (deep nesting, 4,300-digit integers, "
                                              "inf and nan, port 99999, NUL bytes, /dev/zero or a fifo as a key "
                                              "file, a million retries); a config error at file:line, quickly"),
}
DOC = ROOT / "docs" / "reliability.md"


def _key_soundness() -> str:
    """The hand-written "Key soundness" section of the current page, kept when the page is written again."""
    try:
        text = DOC.read_text()
    except OSError:
        return ""
    start = text.find("## Key soundness")
    end = text.find("## Every case", start)
    return text[start:end] if start >= 0 and end > start else ""


KEY_SOUNDNESS = _key_soundness()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuzz-examples", type=int, default=10_000)
    ap.add_argument("--only", nargs="*", choices=list(FAMILIES), help="run only these families (the table "
                                                                     "then holds only them)")
    args = ap.parse_args()
    families = args.only or list(FAMILIES)
    out = Path(tempfile.mkdtemp(prefix="pib-reliability-"))
    junit = out / "junit.xml"
    env = dict(os.environ, PIB_RELIABILITY_DIR=str(out), PIB_FUZZ_EXAMPLES=str(args.fuzz_examples))
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
            *(path for f in families for path in FAMILIES[f][0].split())]
    proc = subprocess.run(argv, cwd=ROOT, env=env)
    seconds = time.monotonic() - t0

    cases: dict[str, list[dict[str, object]]] = defaultdict(list)
    for f in families:
        path = out / f"{f}.jsonl"
        if path.exists():
            cases[f] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    suite = ET.parse(junit).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite  # type: ignore[assignment]
    assert suite is not None
    total, failures, errors = int(suite.get("tests", 0)), int(suite.get("failures", 0)), int(suite.get("errors", 0))

    rows = []
    for f in families:
        tried = sum(int(c["tried"]) for c in cases[f])  # type: ignore[call-overload]
        passed = sum(int(c["passed"]) for c in cases[f])  # type: ignore[call-overload]
        rows.append(f"| {f} | {len(cases[f])} | {tried} | {passed} | {FAMILIES[f][1]} |")
    detail = []
    for f in families:
        for c in cases[f]:
            mark = "yes" if c["passed"] == c["tried"] else "**NO**"
            detail.append(f"| {f} | {c['case']} | {c['tried']} | {c['passed']} | {mark} | {c['seconds']} |")

    command = "python3 bench/reliability.py" + (f" --fuzz-examples {args.fuzz_examples}"
                                                if args.fuzz_examples != 10_000 else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    text = f"""# Reliability

What pib promises when things go wrong, as counts produced by the fault tests.
Written by `{command}` (which runs the tests below with
`PIB_RELIABILITY_DIR` set); run it again to refresh this page.

Machine: {machine()}<br>
Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}<br>
Wall time: {seconds:.0f} s; pytest: {total} tests, {failures} failed, {errors} errors (exit {proc.returncode})

| family | cases | tried | passed | what each case checks |
|---|---|---|---|---|
{chr(10).join(rows)}

"Tried" counts hypothesis examples for the fuzz family ({args.fuzz_examples} per parser or loader property
in this run, a hundredth of that for each property that runs a whole `pib build`; the normal test suite runs
150 and 5) and one per case elsewhere. A kill case SIGKILLs pib and every process
under it (one case kills pib alone) at one point (a marker a build script writes, or the n-th call of a function inside pib) and
checks that the point was really reached. The disk-full cases mount small tmpfs file systems (64 KiB, or
with no free inode) for a real ENOSPC; where mounting is not allowed they inject ENOSPC at the failing write
instead, and their case names below say which ran.

## What the fault tests found (fixed)

- A `pib.toml` that is not UTF-8 crashed the loader with a traceback; it is now a config error naming the line.
- A full disk while writing the image crashed `pib build` with a traceback (`OSError`); it is now an image error
  that names the output directory, and the temporary image directory is removed.
- A restore where not even the scratch directory could be made (no free inode) crashed with a traceback; it
  is now a store problem and a local build, and a proto area that cannot be created is a build error.
- A local store that could not keep a fresh build (e.g. a full disk) only said so in the component log; the
  build now warns.
- Scratch directories of a killed restore or pack (`.proto.NAME.fetch-*`, `.unpack-*`, `.publish-*`) were
  left beside the proto area forever; the next build of that component now removes them.
- Build commands run in sessions of their own, so when pib alone was SIGKILLed its build command lived on and
  could still write into the `.proto.NAME.pib-new` directory that the next build starts afresh; the next
  build now stops such orphans first (they carry `PIB_PROTO` naming that directory; Linux `/proc`).
- pib checked tar headers with its own parser and then let GNU tar extract; the two disagreed (a leading
  NUL in a size or mode field, a long name or link read up to the first NUL of its padded block), so a
  signed archive could put a setuid file, a device node, a fifo or a symlink to the machine key into a
  proto area. pib now extracts with its own reader only (what is checked is what is written), accepts
  only headers exactly as its packer writes them, and walks the extracted tree with lstat before the
  rename.
- Malformed store metadata (deep nesting, a 5,000-digit integer, `1e999`, wrong types) crashed a build
  before the signature was checked; it is now a verify problem and a local build.
- A server dripping headers, or an archive body of the right length a byte at a time, held a build for
  minutes, and a body without a length was written without bound; every request now has a deadline
  (a watchdog shuts the socket down) and every archive download stops at the size its signed metadata
  states (HTTP and S3).
- `pib ci` republished an entry signed only by the machine key under the CI key; it now publishes only
  what it built, or the local entry exactly as signed by a key trusted for publishing.
- Two publishes of one key could leave the archive of one under the metadata of the other; archives are
  now named by their SHA-256 and the metadata (written last) names its own.
- A git lock file or a truncated private index left by a kill failed every later build; a torn line in
  the head-tree memo made a clean component look dirty; half-built proto areas of components the next
  run did not rebuild stayed forever. All are now swept or rebuilt.
- A `proto` pointing at a checkout (or containing one, or inside `.git`) was accepted and the first
  build deleted the checkout; it is a config error.
- A corrupt `.pib/state/NAME.json` (nested too deeply, a field of the wrong type) or `.pib/image.json`
  crashed `build` and `status`; a corrupt record is now set aside as `NAME.corrupt-<time>` with a warning
  and the component or image is made again (read-only commands treat it as "not built").
- `.pib`, `.pib/lock`, `.pib/state` or `log` of the wrong type (a file, a directory, a fifo), or on a
  read-only or full file system, crashed with `FileExistsError` or `OSError`; each is now a workspace
  error (exit 18) naming the path and what to do. A pack scratch directory without a free inode is a
  warning (not kept in the local store), and an output directory that cannot be written an image error.
- Configuration: arrays nested 5,000 deep (`RecursionError`), a 4,301-digit integer (`ValueError`) and a
  NUL byte in a path crashed the loader; `timeout = inf`/`nan`, port 99999, `retries = 1000000` and a
  4,300-digit `jobs` were accepted; `trust.public_keys = ["/dev/zero"]` was read until the process was
  killed. Every numeric setting now has a documented range, no value may hold a NUL or nest more than
  32 deep, and key files are read only if regular and at most 4 KiB: each a config error at file:line.
- An S3 existence check or GET whose headers were dripped a byte at a time held a build for hours
  (botocore's time-out restarts on every byte); the request up to its headers now has a deadline too.
- An unexpected exception printed a raw traceback; the CLI now says "internal error" and where the
  traceback was written (`~/.cache/pib/internal-errors.log`). No case above reaches it: the fuzzer fails
  if one does.
- The fuzzer found that a byte that is not ASCII in a memo of the private index (`.pib/index/NAME.tree`,
  `NAME.trees`) crashed `pib build` (`UnicodeDecodeError`); a damaged memo is now not believed (the tree
  is computed again).
- A sandboxed build could not read the machine's signing key, but it could name it: a symlink in its proto
  area to `~/.config/pib/machine.key` (or to its directory), listed in its manifest or named as the kernel,
  put the private key into the boot archive, because the image step ran outside the sandbox and followed
  it. A build may now leave only what a restore accepts (no link that is absolute or leaves the proto area,
  no special file, no setuid, setgid or sticky bit: a build error, nothing put in place), and the image
  step reads a component's files only inside its proto area.
- A build that left a fifo, a socket or a setuid file was kept and published; every restore then refused
  the artifact (the socket was silently dropped from the archive). It is now a build error.
- A build saw the files of its checkout that its key does not cover (ignored by a `.gitignore`, nested
  repositories): a local setting or a stale object changed the artifact without changing its key, and
  `build --publish` shared it. They are now hidden from the build. A `writable_source` build still saw
  them; it now builds in a copy of exactly what its key covers (the checkout itself is left as it was).
- A committed `.gitattributes` (`* text=auto`, `text`, `eol=lf`, `crlf`) made a file edited to CRLF hash
  as its LF blob: the tree stayed clean and the key unchanged while the build read other bytes. Where a
  file's own bytes differ from the blob git's conversion makes of them, the key now takes its own bytes
  (the tree is dirty, the key another). A `filter.*.clean` driver in a repository's own `.git/config`
  ran while pib computed a key (`git write-tree` hashes racily clean entries again, through their
  filters); the drivers the attributes name are now switched off in those git commands.
- A store that accepted the connection and never answered held `pib build` and `pib status --remote`
  after SIGTERM for as long as its time-out allowed (600 s in the test): the runner waited for the stuck
  restore thread, and the interpreter's exit joined the lookup's. The runner now stops waiting after 5 s,
  pib then exits at once, and after a stop signal it ends within 10 s whatever still runs (exit 130).
- SIGTERM during `pib clobber` between the removal of a proto area and that of its build record left a
  record of a build whose proto area was gone; the record now goes first.
- `pib verify` followed a symlink in the platform directory out of the image (a named file whose bytes
  lay elsewhere verified), hung on a fifo (in the directory, behind a link, as the provenance) and read a
  huge file into memory; it now reads regular files only, never through a link or blocking, each within
  8 GiB, and refuses files the provenance does not name before it hashes anything.
- `core.ignorecase = true` in a repository's own `.git/config` made a new file differing from a tracked one
  in case only (`TOOL.sh` beside `tool.sh`) no content: the tree stayed clean and the key unchanged. The
  key's git commands now pin it off (and the stat check and index hash at their defaults).
- Local store metadata that was a fifo held `pib build`, `status` and `explain` forever (the reading thread
  never returned, so not even SIGTERM ended pib); a link to /dev/zero was read until memory ran out. It is
  now read like every record: regular files only, at most 1 MiB, never blocking; else a store warning.
- pib printed what others wrote as it was: escape sequences in a build's log tail, a store's HTTP reason
  phrase or the key document of an unverified artifact (`pib explain`) reached the terminal (retitling it,
  clearing it, setting the clipboard). Every control character pib prints is now escaped (`\\x1b`).

## Known limits

- A restored archive is bounded by the unpack limits (64 GiB, two million members by default): a bomb that
  declares its size is refused at its header, but one that stays under the bound is extracted in full.
- S3: botocore offers no socket to shut down, so a request past its deadline is abandoned in a daemon
  thread of its own (the build goes on without it); the thread ends when the connection does.
- A NUL byte in a quoted key name is reported at the line of its table, not of the key.
- The leftovers of a kill inside `git add` (its lock file, a truncated index) are planted by the tests as
  such a kill leaves them, not produced by a SIGKILL timed inside git.
- With `sandbox.mode = "none"` (or where bubblewrap cannot run) a build sees and may write anything the
  user can (a `writable_source` build then works in its checkout, not a copy), and a process it leaves
  behind may write into its proto area after pib packed it.
- The signal cases send SIGTERM or SIGINT at five points of a build and SIGTERM at four of `pib clobber`;
  a probe of all 22 function points of the kill family with SIGTERM (and of the five with SIGINT) held
  before any change, so those stay a guard. A thread still stuck 10 s after a stop signal is ended with
  the process: what it leaves is what a kill leaves, swept by the next run.
- A file whose checkout converts it (`eol=crlf`, `ident`, `working-tree-encoding`, a smudge filter such as
  Git LFS) differs from its blob on a fresh clone too: such a tree is dirty from the start and its key is
  that of its own bytes (the same on every clone), so `build --publish` refuses it.

{KEY_SOUNDNESS}
## Every case

| family | case | tried | passed | held | seconds |
|---|---|---|---|---|---|
{chr(10).join(detail)}
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_name(DOC.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, DOC)
    print(text)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
