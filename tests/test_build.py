"""pib configure / build / status / clobber against real git repositories, make and cc."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from pib.build import commands
from pib.build.runner import BuildOptions
from pib.config.loader import load
from pib.errors import EXIT_CODES, PibError, Reason
from tests.gitutil import c_component, commit, make_repo, pib, write

SLEEPER = {
    "build.sh": """\
        #!/bin/sh
        set -e
        echo "start $(date +%s.%N)"
        sleep 1.5
        mkdir -p "$DESTDIR/share"
        echo "$PIB_COMPONENT" > "$DESTDIR/share/$PIB_COMPONENT"
        echo "end $(date +%s.%N)"
        """,
}


def workspace(tmp_path: Path, body: str) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pib.toml").write_text('[platform]\nmin_version = "1"\n\n' + body)
    return ws


def configured(ws: Path) -> None:
    r = pib(ws, "configure")
    assert r.returncode == 0, r.stderr


@pytest.fixture
def three(tmp_path: Path) -> Path:
    for n in ("libc", "cmd"):
        c_component(tmp_path, n)
    make_repo(tmp_path / "repos" / "tools", {**SLEEPER})
    ws = workspace(tmp_path, """\
[components.libc]
source = "../repos/libc"
build = ["make"]

[components.tools]
source = "../repos/tools"
build = ["./build.sh"]

[components.cmd]
source = "../repos/cmd"
build = ["make"]
depends = ["libc", "tools"]
""")
    configured(ws)
    return ws


def build(ws: Path, *args: str) -> dict[str, object]:
    r = pib(ws, "build", "--json", *args)
    data = json.loads(r.stdout)
    data["_rc"] = r.returncode
    data["_stderr"] = r.stderr
    return data


def actions_of(data: dict[str, object]) -> dict[str, str]:
    return {c["component"]: c["action"] for c in data["components"]}  # type: ignore[attr-defined,index]


def test_build_then_noop_then_one_change(three: Path) -> None:
    first = build(three)
    assert first["_rc"] == 0, first
    assert actions_of(first) == {"libc": "built", "tools": "built", "cmd": "built"}
    out = subprocess.run([str(three / "proto.cmd" / "bin" / "cmd")], capture_output=True, text=True)
    assert out.stdout == "cmd\n"
    # Each component wrote only into its own proto area.
    assert sorted(p.name for p in (three / "proto.libc" / "bin").iterdir()) == ["libc"]

    assert actions_of(build(three)) == {"libc": "up-to-date", "tools": "up-to-date", "cmd": "up-to-date"}

    # A one-byte change in libc rebuilds libc and what depends on it, not tools.
    src = three / "projects" / "libc" / "libc.c"
    src.write_text(src.read_text().replace('"libc"', '"libC"'))
    assert actions_of(build(three)) == {"libc": "built", "tools": "up-to-date", "cmd": "built"}


def test_log_starts_with_command_and_environment(three: Path) -> None:
    data = build(three, "tools")
    log = Path(data["components"][0]["log"])  # type: ignore[index]
    text = log.read_text()
    # The exact command: the build command, inside bubblewrap's sandbox.
    assert re.search(r"^\[[0-9:]+\] \$ \S*bwrap .* -- \./build\.sh$", text, re.M)
    assert f"env: DESTDIR={three}/.proto.tools.pib-new" in text
    assert "env: PATH=/usr/local/bin:/usr/bin:/bin" in text
    assert (three / "log" / "tools.log").resolve() == log


def test_parallel_builds_overlap(tmp_path: Path) -> None:
    for n in ("a", "b"):
        make_repo(tmp_path / "repos" / n, SLEEPER)
    ws = workspace(tmp_path, '[components.a]\nsource = "../repos/a"\nbuild = ["./build.sh"]\n'
                   '[components.b]\nsource = "../repos/b"\nbuild = ["./build.sh"]\n')
    configured(ws)
    data = build(ws, "-j", "2")
    spans = {}
    for c in data["components"]:  # type: ignore[attr-defined]
        text = Path(c["log"]).read_text()
        spans[c["component"]] = (float(re.search(r"start (\S+)", text).group(1)),  # type: ignore[union-attr]
                                 float(re.search(r"end (\S+)", text).group(1)))  # type: ignore[union-attr]
    (a0, a1), (b0, b1) = spans["a"], spans["b"]
    assert a0 < b1 and b0 < a1, f"builds did not overlap: {spans}"


def test_failure_stops_running_builds_and_records_nothing(tmp_path: Path) -> None:
    make_repo(tmp_path / "repos" / "slow", {"build.sh": "#!/bin/sh\nsleep 30\nmkdir -p $DESTDIR/x\n"})
    make_repo(tmp_path / "repos" / "bad", {"build.sh": "#!/bin/sh\nsleep 0.5\necho 'cc: error: boom' >&2\nexit 3\n"})
    make_repo(tmp_path / "repos" / "after", {"build.sh": "#!/bin/sh\nmkdir -p $DESTDIR/y\n"})
    ws = workspace(tmp_path, '[components.slow]\nsource = "../repos/slow"\nbuild = ["./build.sh"]\n'
                   '[components.bad]\nsource = "../repos/bad"\nbuild = ["./build.sh"]\n'
                   '[components.after]\nsource = "../repos/after"\nbuild = ["./build.sh"]\ndepends = ["bad"]\n')
    configured(ws)
    t0 = time.monotonic()
    data = build(ws, "-j", "2")
    assert time.monotonic() - t0 < 20, "the slow build was not stopped"
    assert data["_rc"] == EXIT_CODES[Reason.BUILD]
    assert actions_of(data) == {"slow": "stopped", "bad": "failed", "after": "skipped"}
    assert "cc: error: boom" in data["_stderr"] or "boom" in json.dumps(data)
    for n in ("slow", "bad", "after"):
        assert not (ws / f"proto.{n}").exists()
        assert not (ws / f".proto.{n}.pib-new").exists()
        assert not (ws / ".pib" / "state" / f"{n}.json").exists()
    # Human output says what happened to the others and where the log is.
    r = pib(ws, "build", "-j", "2")
    assert "other running builds were stopped" in r.stderr and "full log:" in r.stderr


def test_keep_going_lets_others_finish(tmp_path: Path) -> None:
    make_repo(tmp_path / "repos" / "ok", {"build.sh": "#!/bin/sh\nsleep 1\nmkdir -p $DESTDIR/x\n"})
    make_repo(tmp_path / "repos" / "bad", {"build.sh": "#!/bin/sh\nexit 1\n"})
    ws = workspace(tmp_path, '[components.ok]\nsource = "../repos/ok"\nbuild = ["./build.sh"]\n'
                   '[components.bad]\nsource = "../repos/bad"\nbuild = ["./build.sh"]\n')
    configured(ws)
    data = build(ws, "-j", "2", "--keep-going")
    assert actions_of(data) == {"ok": "built", "bad": "failed"}
    assert data["on_failure"] == "keep-going"


def test_deleted_or_emptied_proto_is_rebuilt(three: Path) -> None:
    build(three)
    import shutil

    shutil.rmtree(three / "proto.libc")
    for f in (three / "proto.cmd" / "bin").iterdir():
        f.unlink()
    (three / "proto.cmd" / "bin").rmdir()
    st = json.loads(pib(three, "status", "--json").stdout)
    why = {c["component"]: c for c in st["components"]}
    assert why["libc"]["state"] == "stale" and "proto area" in why["libc"]["reasons"][0]
    assert why["cmd"]["state"] == "stale"
    assert why["tools"]["state"] == "up-to-date"
    assert actions_of(build(three)) == {"libc": "built", "tools": "up-to-date", "cmd": "built"}


def test_status_says_why(three: Path) -> None:
    build(three)
    (three / "projects" / "tools" / "NEW").write_text("x")
    st = {c["component"]: c for c in json.loads(pib(three, "status", "--json").stdout)["components"]}
    assert st["tools"]["state"] == "stale" and st["tools"]["dirty"] is True
    assert "source.tree changed" in st["tools"]["reasons"]
    # cmd is keyed by the output of tools, which nobody knows until tools is built again.
    assert st["cmd"]["state"] == "stale" and st["cmd"]["key_pending"] is True
    assert st["cmd"]["depends"]["tools"] == "pending" and st["cmd"]["depends"]["libc"] == "built"
    assert st["libc"]["state"] == "up-to-date"


def test_key_file_change_forces_rebuild(tmp_path: Path) -> None:
    c_component(tmp_path, "extra")
    ws = workspace(tmp_path, '[components.extra]\nsource = "../repos/extra"\nbuild = ["make"]\n'
                   'key_files = ["illumos-compat"]\n')
    (ws / "illumos-compat").write_text("0123abc\n")
    configured(ws)
    assert actions_of(build(ws)) == {"extra": "built"}
    (ws / "illumos-compat").write_text("4567def\n")
    st = json.loads(pib(ws, "status", "--json").stdout)["components"][0]
    assert st["reasons"] == ["key_files.illumos-compat changed"]
    assert actions_of(build(ws)) == {"extra": "built"}


def test_clobber_one_rebuilds_only_it(three: Path) -> None:
    build(three)
    (three / "projects" / "libc" / "junk.o").write_text("ignored build product")
    r = pib(three, "clobber", "libc")
    assert r.returncode == 0, r.stderr
    assert not (three / "proto.libc").exists()
    assert not (three / "projects" / "libc" / "junk.o").exists()  # git clean -xdf
    assert (three / "proto.tools").exists()
    assert actions_of(build(three)) == {"libc": "built", "tools": "up-to-date", "cmd": "up-to-date"}
    assert pib(three, "clobber", "--all").returncode == 0
    assert actions_of(build(three)) == {"libc": "built", "tools": "built", "cmd": "built"}


def test_second_build_refuses_or_waits(three: Path) -> None:
    cfg = load(three)
    lock = commands.workspace_lock(cfg)
    lock.acquire(wait=False)
    try:
        r = pib(three, "build")
        assert r.returncode == EXIT_CODES[Reason.LOCKED]
        assert "in use by another pib" in r.stderr and "--wait" in r.stderr
        waiter = subprocess.Popen([sys.executable, "-m", "pib", "-C", str(three), "build", "--wait", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert waiter.stderr is not None
        # Release only once the waiter says it waits (a loaded machine may take seconds to start it).
        first = waiter.stderr.readline()
        assert "waiting for another build" in first, first
        time.sleep(0.5)
        assert waiter.poll() is None  # still waiting for the lock
    finally:
        lock.release()
    _, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, first + err


def test_unknown_component_and_config_error_exit_codes(three: Path) -> None:
    r = pib(three, "build", "nosuch")
    assert r.returncode == EXIT_CODES[Reason.CONFIG] and "no component named 'nosuch'" in r.stderr
    (three / "pib.toml").write_text((three / "pib.toml").read_text() + "\nbogus = 1\n")
    r = pib(three, "build")
    assert r.returncode == EXIT_CODES[Reason.CONFIG]
    assert re.search(r"pib\.toml:\d+: unknown key 'components.cmd.bogus'", r.stderr)
    assert "Traceback" not in r.stderr


def test_old_host_is_refused_then_overridden_loudly(three: Path) -> None:
    text = (three / "pib.toml").read_text().replace('min_version = "1"', 'min_version = "99"')
    (three / "pib.toml").write_text(text)
    r = pib(three, "configure")
    assert r.returncode == EXIT_CODES[Reason.PLATFORM]
    assert "older than the oldest supported platform 99" in r.stderr
    r = pib(three, "configure", "--allow-old-platform")
    assert r.returncode == 0 and "WARNING" in r.stderr
    assert pib(three, "build").returncode == EXIT_CODES[Reason.PLATFORM]


def test_configure_switches_branch_and_updates(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repos" / "x", {"build.sh": "#!/bin/sh\nmkdir -p $DESTDIR\n", "v": "1\n"})
    subprocess.run(["git", "-C", str(repo), "branch", "release"], check=True)
    ws = workspace(tmp_path, '[components.x]\nsource = "../repos/x"\nbranch = "release"\nbuild = ["./build.sh"]\n')
    configured(ws)
    head = lambda: subprocess.run(["git", "-C", str(ws / "projects/x"), "rev-parse", "--abbrev-ref", "HEAD"],  # noqa: E731
                                  capture_output=True, text=True).stdout.strip()
    assert head() == "release"
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "release"], check=True)
    write(repo, {"v": "2\n"})
    commit(repo, "v2")
    configured(ws)
    assert (ws / "projects/x/v").read_text() == "1\n"  # plain configure never moves a branch
    r = pib(ws, "configure", "--update", "--json")
    assert json.loads(r.stdout)["components"][0]["action"] == "updated"
    assert (ws / "projects/x/v").read_text() == "2\n"
    # A dirty tree is reported and never overwritten.
    write(ws / "projects/x", {"v": "mine\n"})
    r = pib(ws, "configure", "--json")
    assert json.loads(r.stdout)["components"][0]["dirty"] is True
    assert (ws / "projects/x/v").read_text() == "mine\n"


def test_pr_refs_are_fetched(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repos" / "x", {"build.sh": "#!/bin/sh\nmkdir -p $DESTDIR\n", "v": "main\n"})
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "feature"], check=True)
    write(repo, {"v": "pr\n"})
    commit(repo, "pr")
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "-C", str(repo), "update-ref", "refs/pull/7/head", sha], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)
    ws = workspace(tmp_path, '[components.x]\nsource = "../repos/x"\nbranch = "PR-7"\nbuild = ["./build.sh"]\n')
    configured(ws)
    assert (ws / "projects/x/v").read_text() == "pr\n"


def test_build_in_process_reports_events(three: Path) -> None:
    seen: list[tuple[str, str]] = []
    cfg = load(three)
    rep = commands.build(cfg, None, BuildOptions(jobs=2), on_event=lambda e: seen.append((e.component, e.state)))
    assert rep.ok
    assert ("tools", "building") in seen and ("tools", "built") in seen
    assert seen.index(("libc", "built")) < seen.index(("cmd", "building"))


def test_progress_lines_are_timestamped_when_not_a_terminal(three: Path) -> None:
    r = pib(three, "build")
    assert r.returncode == 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and all(re.match(r"^\[\d\d:\d\d:\d\d\] \S+: ", ln) for ln in lines), r.stderr
    assert re.search(r"^libc\s+built\s+\d", r.stdout, re.M)  # the summary table


def test_build_errors_are_pib_errors(tmp_path: Path) -> None:
    ws = workspace(tmp_path, '[components.x]\nsource = "../nowhere"\nbuild = ["true"]\n')
    with pytest.raises(PibError) as info:
        commands.configure(load(ws))
    assert info.value.reason is Reason.SOURCE
    _ = datetime  # keep import for readability of timestamps above
