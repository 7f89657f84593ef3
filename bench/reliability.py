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
    "outage": ("tests/test_outage.py", "store down, killed mid-transfer or misbehaving; bounded time, "
                                       "warning, local build"),
    "concurrency": ("tests/test_concurrency.py", "4 simultaneous builds sharing stores; images right, "
                                                 "every entry verifies"),
    "fuzz": ("tests/test_fuzz.py", "hypothesis examples against the manifest, config and CBE lock parsers; "
                                   "only pib's own errors"),
    "diskfull": ("tests/test_diskfull.py", "a full file system (tmpfs) under restore, image and store; "
                                           "clear error, nothing half-written kept"),
    "tar parser": ("tests/test_archive.py", "hand-built tar headers GNU tar reads differently (leading NULs, "
                                            "long names with hidden bytes, special types and bits); refused, "
                                            "nothing written"),
    "metadata": ("tests/test_artifacts.py", "malformed store metadata (deep nesting, huge integers, 1e999, "
                                            "wrong types) and two interleaved publishes of one key; a verify "
                                            "problem, never a crash, and every entry verifies"),
    "transfer": ("tests/test_store_http.py tests/test_store_s3.py",
                 "a server dripping headers or an archive, or sending an endless body (HTTP and S3); cut off "
                 "at a deadline and at the size the signed metadata states"),
    "trust": ("tests/test_publish.py", "pib ci with an entry signed only by the machine key; never "
                                       "republished under the publishing key"),
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

"Tried" counts hypothesis examples for the fuzz family ({args.fuzz_examples} per property in this run;
the normal test suite runs 150) and one per case elsewhere. A kill case SIGKILLs pib and every process
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

## Known limits

- A restored archive is bounded by the unpack limits (64 GiB, two million members by default): a bomb that
  declares its size is refused at its header, but one that stays under the bound is extracted in full.
- S3: the deadline covers every response body, but not headers dripped by an S3 endpoint (botocore's
  per-read time-out applies there, not a deadline for the whole answer).
- Not done yet (no cases below): tracebacks on bad local state (full or read-only state, log or output
  directories, `.pib` or `.pib/lock` of the wrong type, corrupt `state/*.json` or `.pib/image.json`) and
  on hostile configuration values (deep arrays, 4,300-digit integers, `timeout = inf`/`nan`, port 99999,
  NUL in a path, `trust.public_keys = ["/dev/zero"]`, `retries = 1000000`), and a fuzzer over them.
- The leftovers of a kill inside `git add` (its lock file, a truncated index) are planted by the tests as
  such a kill leaves them, not produced by a SIGKILL timed inside git.

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
