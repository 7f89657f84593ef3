"""No-op `pib build` on a 6-component workspace vs `git status --porcelain` in each checkout.

Run: python3 bench/noop.py   (uses .venv/bin/pib if present)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import ROOT, median_time, sh, write_section

RUNS = 15
N = 6


def main() -> None:
    pib = ROOT / ".venv" / "bin" / "pib"
    pib_cmd = [str(pib)] if pib.exists() else [sys.executable, "-m", "pib"]
    tmp = Path(tempfile.mkdtemp(prefix="pib-bench-noop-"))
    try:
        body = ""
        for i in range(N):
            repo = tmp / "repos" / f"c{i}"
            repo.mkdir(parents=True)
            sh(["git", "init", "-q", "-b", "main", str(repo)])
            # A few hundred files per component, like a small real project.
            for d in range(20):
                (repo / f"dir{d}").mkdir()
                for f in range(25):
                    (repo / f"dir{d}" / f"file{f}.c").write_text(f"int x{d}_{f} = {i};\n" * 20)
            (repo / "build.sh").write_text('#!/bin/sh\nmkdir -p "$DESTDIR/bin"\necho ok > "$DESTDIR/bin/c"\n')
            (repo / "build.sh").chmod(0o755)
            sh(["git", "add", "-A"], cwd=repo)
            sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"], cwd=repo)
            deps = f'depends = ["c{i - 1}"]\n' if i % 2 else ""
            body += f'[components.c{i}]\nsource = "../repos/c{i}"\nbuild = ["./build.sh"]\n{deps}\n'
        ws = tmp / "ws"
        ws.mkdir()
        (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n\n' + body)
        sh([*pib_cmd, "-C", str(ws), "configure"])
        sh([*pib_cmd, "-C", str(ws), "build", "-q"])

        def noop() -> None:
            out = subprocess.run([*pib_cmd, "-C", str(ws), "build", "--json"], capture_output=True, text=True,
                                 check=True).stdout
            assert out.count('"up-to-date"') == N, out

        def git_status() -> None:
            for i in range(N):
                sh(["git", "-C", str(ws / "projects" / f"c{i}"), "status", "--porcelain"])

        t_pib = median_time(noop, RUNS)
        t_git = median_time(git_status, RUNS)
        ratio = t_pib / t_git
        table = (
            f"| what | median of {RUNS} |\n|---|---|\n"
            f"| `pib build` (no-op, 6 components, 500 files each) | {t_pib:.3f} s |\n"
            f"| `git status --porcelain` in each of the 6 checkouts | {t_git:.3f} s |\n| ratio | {ratio:.2f}x |\n"
        )
        verdict = (f"Targets: no-op under 0.3 s ({'met' if t_pib < 0.3 else 'NOT met'}); within 5x of the git "
                   f"baseline ({'met' if ratio <= 5 else 'NOT met'}). For scale, BitBake needs about 5 s for its no-op.")
        print(table + "\n" + verdict)
        write_section("noop", "python3 bench/noop.py", table + "\n" + verdict)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
