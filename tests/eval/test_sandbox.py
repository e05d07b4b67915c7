"""The code sandbox: hostile programs fail within their timeout and leave the host untouched.

Each hostile case is run with the Python-level guards on (the default) and, where the OS-level
isolation alone is what matters, with the guards off (or through modules the guards do not
cover: ``posix``, ``_socket``, ``ctypes``), so the namespaces and limits are shown to hold by
themselves. Host-side checks scan the host's ``/proc`` for processes carrying a random marker.
"""

import gzip
import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dllm_jax.errors import ConfigError
from dllm_jax.eval.sandbox import SandboxConfig, isolation_problem, run_program, run_programs

TIMEOUT = 2.0
SLACK = 4.0  # process start-up and teardown on a loaded 2-core machine
CFG = SandboxConfig(timeout_s=TIMEOUT)
RAW = SandboxConfig(timeout_s=TIMEOUT, guards=False)


def _check_failed(r, limit=TIMEOUT + SLACK):
    assert not r.passed
    assert r.seconds < limit
    assert group_members(r.pid, zombies=True) == [], "processes left behind"


def group_members(pgid: int, zombies: bool = False) -> list[int]:
    """Host pids in process group ``pgid`` (zombies only if asked), from ``/proc/<pid>/stat``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if stat:
            fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp ...
            if int(fields[2]) == pgid and (zombies or fields[0] not in ("Z", "X")):
                found.append(int(entry))
    return found


def _host_processes(marker: str) -> list[int]:
    """Host pids (other than ours) whose command line or name contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            comm = Path("/proc", entry, "comm").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline or marker.encode() in comm:
            found.append(int(entry))
    return found


def _kill_marked(marker: str) -> None:
    """SIGKILLs escaped processes carrying ``marker`` (only ever started by a test's program,
    when the sandbox failed), round after round, since survivors of a fork bomb refill."""
    for _ in range(200):
        pids = _host_processes(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def test_isolation_is_available():
    # The project's install step provides bwrap; every OS-level test below relies on it.
    assert isolation_problem() is None


def test_plain_programs_pass_and_fail():
    ok = run_program("def f(x):\n    return x + 1\n\nassert f(1) == 2\nprint('done')\n", CFG)
    assert ok.passed and ok.returncode == 0 and ok.stdout.strip() == "done"
    bad = run_program("assert 1 + 1 == 3\n", CFG)
    assert not bad.passed and bad.returncode == 1 and "AssertionError" in bad.stderr
    syntax = run_program("def f(:\n", CFG)
    assert not syntax.passed


def test_sentinel_not_printed_by_exit_tricks():
    for src in ["import sys\nsys.exit(0)\nassert False\n",
                "import os\nos._exit(0)\nassert False\n",
                "raise SystemExit(0)\nassert False\n",
                "import sys\nprint('ok')\nsys.stdout.flush()\nsys.exit(0)\nassert False\n"]:
        r = run_program(src, CFG)
        assert r.returncode == 0, src  # the exit status alone would have counted as a pass
        _check_failed(r)


@pytest.mark.parametrize("config", [CFG, RAW], ids=["guards", "os_only"])
def test_infinite_loop_is_killed(config):
    r = run_program("while True:\n    pass\n", config)
    assert r.timed_out
    assert r.seconds >= TIMEOUT - 0.1
    _check_failed(r)


def test_sleeping_child_killed_with_group():
    # The program forks (guards off) and exits at once; its child must not outlive it.
    src = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n"
    r = run_program(src, RAW)
    assert group_members(r.pid, zombies=True) == []


# A daemon the classic way: fork, setsid (leaving the process group), fork again, exec a
# long sleep; the program waits until the daemon is up, then exits successfully.
_DAEMON = """import posix
r, w = posix.pipe()
if {fork}() == 0:
    {setsid}()
    if {fork}() == 0:
        posix.write(w, b"x")
        posix.execv("/bin/sleep", ["sleep", "{seconds}"])
    posix._exit(0)
assert posix.read(r, 1) == b"x"
print("daemon started")
"""
_CTYPES = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"


@pytest.mark.parametrize("how", ["posix", "ctypes"])
@pytest.mark.parametrize("config", [CFG, RAW], ids=["guards", "os_only"])
def test_double_fork_daemon_does_not_survive(how, config):
    seconds = f"4242.{secrets.randbelow(10**9):09d}"  # the daemon's marker on the host
    if how == "posix":
        src = _DAEMON.format(fork="posix.fork", setsid="posix.setsid", seconds=seconds)
    else:  # straight to libc, past anything Python-level
        src = _CTYPES + _DAEMON.format(fork="libc.fork", setsid="libc.setsid", seconds=seconds)
    r = run_program(src, config)
    survivors = _host_processes(seconds)
    _kill_marked(seconds)
    assert r.passed and r.stdout.strip() == "daemon started"  # the daemon did start
    assert survivors == [], "the daemon outlived the run"


def test_fork_bomb_guarded():
    r = run_program("import os\nwhile True:\n    os.fork()\n", CFG)
    _check_failed(r)
    assert "os.fork is disabled" in r.stderr


def test_fork_bomb_os_limits():
    src = ("import os\nn = 0\nwhile True:\n    try:\n        os.fork()\n        n += 1\n"
           "    except OSError:\n        pass\n")
    r = run_program(src, RAW)
    _check_failed(r)
    # the process limit was not exhausted for later programs
    assert run_program("assert True\n", RAW).passed


def test_fork_bomb_is_contained_and_does_not_starve_other_runs():
    # A gentle (sleeping) fork bomb through posix, past the guards, whose processes leave the
    # process group; a second program forking a few children runs while the bomb is at its
    # process limit, and must be unaffected.
    marker = "bomb" + secrets.token_hex(4)
    bomb = (_CTYPES + f"libc.prctl(15, {marker.encode()!r}, 0, 0, 0)\n"
            "import posix, time\nwhile True:\n    try:\n        if posix.fork() == 0:\n"
            "            posix.setsid()\n    except OSError:\n        time.sleep(0.01)\n")
    forker = ("import posix\nkids = [posix.fork() for _ in range(4)]\n"
              "if 0 in kids:\n    posix._exit(0)\n"
              "assert all(posix.waitpid(k, 0)[1] == 0 for k in kids)\n")
    results = {}
    thread = threading.Thread(target=lambda: results.update(bomb=run_program(bomb, CFG)))
    thread.start()
    try:
        time.sleep(0.5 * TIMEOUT)  # the bomb is running (and at its limit) by now
        results["forker"] = run_program(forker, SandboxConfig(timeout_s=30))
    finally:
        thread.join()
        survivors = _host_processes(marker)
        _kill_marked(marker)
    _check_failed(results["bomb"])
    assert results["bomb"].timed_out
    assert results["forker"].passed, results["forker"].stderr
    assert survivors == [], f"{len(survivors)} fork-bomb processes outlived the run"
    assert run_program("assert True\n", RAW).passed


def test_huge_allocation_fails_fast():
    for config in (CFG, RAW):
        r = run_program("x = bytearray(8 * 1024 ** 3)\nassert len(x) > 0\n", config)
        _check_failed(r, limit=SLACK)
        assert "MemoryError" in r.stderr


def test_file_size_open_files_and_tmp_limits():
    config = SandboxConfig(timeout_s=10, guards=False, file_bytes=1 << 20, open_files=64,
                           tmp_bytes=4 << 20)
    src = """import errno
try:
    open("big", "wb").write(b"x" * (2 << 20))
    raise SystemExit(3)
except OSError as e:
    assert e.errno == errno.EFBIG, e
files = []
try:
    while True:
        files.append(open("/dev/null"))
except OSError as e:
    assert e.errno == errno.EMFILE and len(files) < 64, e
for f in files:
    f.close()
try:
    for i in range(8):  # each under the file-size limit, together over the tmpfs size
        open(f"part{i}", "wb").write(b"x" * ((1 << 20) - 1))
    raise SystemExit(4)
except OSError as e:
    assert e.errno == errno.ENOSPC, e
"""
    r = run_program(src, config)
    assert r.passed, r.stderr


def test_rm_rf_outside_workdir(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("precious")
    src = (f"import os, shutil\ntarget = {str(canary)!r}\n"
           "os.system('rm -rf ' + target)\n"
           "try:\n    shutil.rmtree(target)\nexcept Exception:\n    pass\n"
           "try:\n    os.remove(os.path.join(target, 'keep.txt'))\nexcept Exception:\n    pass\n"
           "assert not os.path.exists(target)\n")
    r = run_program(src, CFG)
    _check_failed(r)
    assert (canary / "keep.txt").read_text() == "precious"
    # Without the guards the rm runs, in the sandbox, where the host's /tmp is not even
    # visible (so the program's own check is fooled); the canary survives.
    r = run_program(src, RAW)
    assert group_members(r.pid, zombies=True) == []
    assert (canary / "keep.txt").read_text() == "precious"


def test_host_files_are_out_of_reach():
    # A world-writable host directory outside /tmp (which the program may not touch, whatever
    # the permissions say), this test file (host data: not shown at all), and the system
    # directories (shown read-only).
    canary = Path(tempfile.mkdtemp(prefix="dllm_canary_", dir="/var/tmp"))
    try:
        canary.chmod(0o777)
        (canary / "keep.txt").write_text("precious")
        (canary / "keep.txt").chmod(0o666)
        src = (f"import posix\ntarget = {str(canary)!r}\n"
               "for attempt in (lambda: open(target + '/keep.txt', 'w').write('gone'),\n"
               "                lambda: posix.unlink(target + '/keep.txt'),\n"
               f"                lambda: open({__file__!r}).read(),\n"
               "                lambda: open('/usr/dllm_new', 'w'),\n"
               "                lambda: open('/etc/dllm_new', 'w'),\n"
               "                lambda: open('/dllm_new', 'w')):\n"
               "    try:\n        attempt()\n        print('done')\n"
               "    except OSError as e:\n        print(e.strerror)\n")
        r = run_program(src, RAW)
        assert r.passed, r.stderr
        assert r.stdout.split("\n")[:6] == ["No such file or directory"] * 3 + [
            "Read-only file system"] * 3
        assert (canary / "keep.txt").read_text() == "precious"
        assert sorted(p.name for p in canary.iterdir()) == ["keep.txt"]
    finally:
        shutil.rmtree(canary)


def test_writes_to_world_writable_dirs_stay_in_the_sandbox():
    name = "dllm_leak_" + secrets.token_hex(6)
    dirs = ["/tmp", "/dev/shm", "/var/tmp"]
    src = (f"import posix\nfor d in {dirs!r}:\n"
           "    try:\n"
           f"        fd = posix.open(d + '/{name}', posix.O_WRONLY | posix.O_CREAT, 0o644)\n"
           "        posix.write(fd, b'leak')\n        posix.close(fd)\n        print('wrote', d)\n"
           "    except OSError as e:\n        print('refused', d, e.strerror)\n")
    r = run_program(src, RAW)
    leaked = [d for d in dirs if os.path.exists(f"{d}/{name}")]
    for d in leaked:
        os.remove(f"{d}/{name}")
    assert r.passed, r.stderr
    assert "wrote /tmp" in r.stdout  # its own private /tmp is writable
    assert leaked == [], f"files written by the program appeared on the host in {leaked}"


def test_files_inside_workdir_are_allowed():
    src = ("import os\nopen('a.txt', 'w').write('x')\nos.remove('a.txt')\n"
           "assert not os.path.exists('a.txt')\n")
    assert run_program(src, CFG).passed


def test_parent_secret_not_visible(monkeypatch):
    monkeypatch.setenv("DLLM_TEST_SECRET", "s3cr3t-value")
    src = ("import os\nv = os.environ.get('DLLM_TEST_SECRET')\nprint(v)\n"
           "assert v == 's3cr3t-value'\n")
    r = run_program(src, CFG)
    _check_failed(r)
    assert r.stdout.strip() == "None"
    # reading the test runner's environment via /proc
    src = (f"data = open('/proc/{os.getpid()}/environ', 'rb').read()\n"
           "assert b's3cr3t' in data\n")
    _check_failed(run_program(src, CFG))


def test_host_processes_not_visible_in_proc():
    me, parent = os.getpid(), os.getppid()
    expected = Path(f"/proc/{me}/cmdline").read_bytes()
    src = ("import posix\n"
           "print(*sorted(int(p) for p in posix.listdir('/proc') if p.isdigit()))\n"
           f"data = open('/proc/{me}/cmdline', 'rb').read()\n"
           f"assert data == {expected!r}\n"
           f"open('/proc/{parent}/cmdline', 'rb').read()\n")
    r = run_program(src, RAW)
    _check_failed(r)
    assert "FileNotFoundError" in r.stderr
    assert r.stdout.strip() == "1 2"  # only the runner and the program itself


class _Server:
    """A localhost TCP server counting the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def test_network_blocked():
    server = _Server()
    try:
        src = (f"import socket\ns = socket.create_connection(('127.0.0.1', {server.port}), "
               "timeout=1)\ns.sendall(b'hi')\n")
        _check_failed(run_program(src, CFG))
        _check_failed(run_program(src, RAW))
        # _socket is below the guards' reach
        src = ("import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
               f"s.settimeout(1)\ns.connect(('127.0.0.1', {server.port}))\ns.send(b'hi')\n")
        for config in (CFG, RAW):
            r = run_program(src, config)
            _check_failed(r)
            assert "ConnectionRefusedError" in r.stderr  # nothing listens in its namespace
        # the server is reachable from here, so a zero count means the sandbox blocked it
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        time.sleep(0.3)
        assert server.accepted == 1
    finally:
        server.close()


def test_pool_runs_in_parallel_and_keeps_order():
    # Each sleeper prints when it ran; with two workers the two sleeps overlap in time (a
    # loaded machine can slow everything down, but cannot make a serial pool overlap).
    sleeper = "import time\ns = time.time()\ntime.sleep(1.5)\nprint(s, time.time())\n"
    srcs = [sleeper, "assert False\n", sleeper, "assert True\n"]
    rs = run_programs(srcs, SandboxConfig(timeout_s=30.0), workers=2)
    assert [r.passed for r in rs] == [True, False, True, True]
    (s0, e0), (s2, e2) = (map(float, rs[i].stdout.split()) for i in (0, 2))
    assert max(s0, s2) < min(e0, e2), (s0, e0, s2, e2)


def test_humaneval_canonical_solutions_all_pass(data_dir):
    # Programs built as OpenAI's human-eval harness does: prompt + completion, the test code,
    # then check(entry_point).
    with gzip.open(data_dir / "humaneval.jsonl.gz", "rt", encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    programs = [f"{it['prompt']}{it['canonical_solution']}\n\n{it['test']}\n\n"
                f"check({it['entry_point']})\n" for it in items]
    results = run_programs(programs, SandboxConfig(), workers=2)
    assert len(items) == 164
    assert [it["task_id"] for it, r in zip(items, results, strict=True) if not r.passed] == []


def test_without_isolation_programs_are_refused_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    assert "bwrap" in isolation_problem()
    with pytest.raises(ConfigError, match="isolation"):
        run_program("assert True\n", CFG)
    with pytest.raises(ConfigError, match="isolation"):
        run_programs(["assert True\n"], CFG)
    with pytest.warns(UserWarning, match="WITHOUT isolation"):
        r = run_program("assert True\n", SandboxConfig(timeout_s=TIMEOUT, allow_unsafe=True))
    assert r.passed


def test_config_validation():
    with pytest.raises(ConfigError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ConfigError, match="tmp_bytes"):
        SandboxConfig(tmp_bytes=0)
    with pytest.raises(ValueError, match="workers"):
        run_programs(["pass"], CFG, workers=0)
