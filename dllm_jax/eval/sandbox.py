"""Run untrusted candidate programs (with their tests) in a separate, limited process.

The real guards are the operating system's: a new session / process group killed with SIGKILL
on a wall-clock timeout, ``setrlimit`` on CPU seconds, address space, processes and file size,
a fresh temporary working directory, an environment reduced to ``PATH``/``LANG``/
``PYTHONHASHSEED``, ``python -I``, stdin from ``/dev/null``. When the harness runs as root it also
(a) moves the child into a new network namespace when the kernel allows it, and (b) drops to an
unprivileged uid (``nobody``) when that uid can run the interpreter -- root ignores
``RLIMIT_NPROC`` and could delete anything, so without (b) the fork-bomb limit is not in force
(:func:`candidate_uid` says which). A small preamble additionally replaces ``socket``,
``os.system``, ``subprocess``, ``os.kill``, ``shutil.rmtree`` and file removal outside the
working directory by raisers; that is defence in depth only.

A program passes only if it exits with status 0 *and* the runner printed a per-run random
sentinel after the program's code (tests included) finished, so ``sys.exit(0)`` or
``os._exit(0)`` before the tests does not pass. The sentinel reaches the runner over a pipe and
never appears in the program's source or command line. (A program written to attack the
harness could still find it by inspecting the runner's frame; the sentinel stops accidental
early exits from counting, not a deliberate forger.)

Limits without root: the program then runs under the harness's own uid, so it could read files
that uid can read, including ``/proc/<parent>/environ``; run evaluations as root (programs drop
to ``nobody``) or inside a container for hostile code.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import dataclasses
import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_NOBODY = 65534
_CLONE_NEWNET = 0x40000000
_PR_SET_CHILD_SUBREAPER = 36

# Runs in the child; reads the sentinel from stdin first, then installs the guards, then runs
# main.py (program + tests), then prints the sentinel. Kept free of the sentinel itself.
_RUNNER = r'''
import sys
def _dllm_run():
    token = sys.stdin.readline().strip()
    import os
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = open(os.devnull)
    if GUARDS:
        _dllm_guard()
    with open("main.py", encoding="utf-8") as f:
        src = f.read()
    code = compile(src, "main.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, ("\n" + token + "\n").encode())

def _dllm_guard():
    import os, shutil, socket, subprocess, builtins
    cwd = os.path.realpath(os.getcwd())
    def deny(name):
        def f(*a, **k):
            raise PermissionError(f"sandbox: {name} is disabled")
        return f
    for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd",
                 "getaddrinfo"):
        if hasattr(socket, name):
            setattr(socket, name, deny("socket." + name))
    for name in ("system", "popen", "kill", "killpg", "fork", "forkpty", "setsid", "execv",
                 "execve", "execl", "execle", "execlp", "execvp", "execvpe", "spawnv",
                 "spawnve", "spawnl", "spawnle", "posix_spawn", "posix_spawnp", "putenv",
                 "unsetenv", "chmod", "chown", "truncate"):
        if hasattr(os, name):
            setattr(os, name, deny("os." + name))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput",
                 "getstatusoutput"):
        setattr(subprocess, name, deny("subprocess." + name))
    shutil.rmtree = deny("shutil.rmtree")
    shutil.move = deny("shutil.move")
    def inside(path):
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return False
        return p == cwd or p.startswith(cwd + os.sep)
    def local_only(name, fn):
        def f(path, *a, **k):
            if not inside(path):
                raise PermissionError(f"sandbox: {name} outside the working directory")
            return fn(path, *a, **k)
        return f
    for name in ("remove", "unlink", "rmdir", "removedirs", "rename", "replace"):
        setattr(os, name, local_only("os." + name, getattr(os, name)))

_dllm_run()
'''


@dataclasses.dataclass(frozen=True, kw_only=True)
class SandboxConfig:
    """Limits for one program run.

    Attributes:
      timeout_s: wall-clock seconds before the process group is killed.
      cpu_s: CPU-seconds limit (``RLIMIT_CPU``); default ``ceil(timeout_s) + 1``.
      memory_bytes: address-space limit (``RLIMIT_AS``).
      max_processes: ``RLIMIT_NPROC`` (per uid; not enforced for root, see module docs).
      file_bytes: largest file the program may write (``RLIMIT_FSIZE``), stdout included.
      python: interpreter; default ``sys.executable`` (or, when dropping to ``nobody``, the
        first of it and ``python3`` on ``PATH`` that ``nobody`` can run).
      drop_privileges: when running as root, run the program as ``nobody`` if possible.
      guards: install the Python-level preamble (tests turn it off to check the OS limits).
      output_bytes: how much of stdout / stderr is kept in the result.
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    max_processes: int = 32
    file_bytes: int = 16 << 20
    python: str | None = None
    drop_privileges: bool = True
    guards: bool = True
    output_bytes: int = 4096

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"SandboxConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"SandboxConfig.cpu_s must be >= 1, got {self.cpu_s}")
        for name in ("memory_bytes", "max_processes", "file_bytes", "output_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SandboxConfig.{name} must be >= 1")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Outcome of one program.

    Attributes:
      passed: exit status 0 and the sentinel was printed after the program finished.
      returncode: the child's status (negative: killed by that signal).
      timed_out: the wall-clock timeout fired.
      stdout, stderr: the last ``output_bytes`` of each (sentinel removed).
      pid: the child's pid, which is also its process-group id.
      seconds: wall-clock time.
    """

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    pid: int
    seconds: float


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def _libc_unshare():
    return getattr(_libc(), "unshare", None)


@functools.cache
def _become_subreaper() -> bool:
    """Makes this process the reaper of orphaned sandbox descendants (Linux), so killed
    process trees are reaped here instead of piling up as zombies under an init that does not
    reap -- zombies still count against the sandbox uid's ``RLIMIT_NPROC``."""
    prctl = getattr(_libc(), "prctl", None)
    return prctl is not None and prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


@functools.cache
def _can_run_as(uid: int, python: str) -> bool:
    try:
        r = subprocess.run([python, "-I", "-c", "pass"], user=uid, group=uid, extra_groups=[],
                           env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=30,
                           cwd="/")
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _can_unshare_net() -> bool:
    if os.geteuid() != 0 or _libc_unshare() is None:
        return False

    def probe():
        if _libc_unshare()(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare")

    try:
        r = subprocess.run(["/bin/true"], preexec_fn=probe, timeout=30)  # noqa: PLW1509
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _resolve(config: SandboxConfig) -> tuple[str, int | None]:
    """The interpreter and the uid to run as (None: keep ours)."""
    first = config.python or sys.executable
    if os.geteuid() != 0 or not config.drop_privileges:
        return first, None
    candidates = [first] if config.python else [sys.executable, shutil.which("python3") or "",
                                                "/usr/bin/python3"]
    for py in candidates:
        if py and _can_run_as(_NOBODY, py):
            return py, _NOBODY
    return first, None


def candidate_uid(config: SandboxConfig | None = None) -> int:
    """The uid programs run as (``RLIMIT_NPROC`` is only enforced when it is not 0)."""
    uid = _resolve(config or SandboxConfig())[1]
    return os.geteuid() if uid is None else uid


def isolates_network() -> bool:
    """Whether programs get their own (empty) network namespace."""
    return _can_unshare_net()


def _preexec(config: SandboxConfig, uid: int | None, netns: bool):
    cpu = config.cpu_s or int(config.timeout_s) + 1
    unshare = _libc_unshare() if netns else None

    def fn():  # runs in the child between fork and exec: syscalls only
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (config.memory_bytes, config.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (config.file_bytes, config.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (config.max_processes, config.max_processes))
        if unshare is not None:
            unshare(_CLONE_NEWNET)  # best effort; failure leaves the preamble's guard
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return fn


def _tail(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read().decode("utf-8", "replace")


def _reap_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILLs and reaps what is left of group ``pgid`` (orphans were reparented to us)."""
    end = time.monotonic() + timeout_s
    me = os.getpid()
    while True:
        members = group_members(pgid, zombies=True)
        if not members or time.monotonic() > end:
            return
        _kill_group(pgid)
        for pid, ppid in members:
            if ppid == me:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        time.sleep(0.005)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(source: str, config: SandboxConfig | None = None) -> RunResult:
    """Runs ``source`` (a complete program: candidate code followed by its tests).

    Args:
      source: Python source; it passes if it runs to the end without an exception.
      config: limits; default :class:`SandboxConfig`.

    Returns:
      :class:`RunResult`. Never raises for anything the program does.
    """
    config = config or SandboxConfig()
    python, uid = _resolve(config)
    _become_subreaper()
    netns = _can_unshare_net()
    token = secrets.token_hex(16)
    runner = _RUNNER.replace("if GUARDS:", f"if {config.guards!r}:")
    with tempfile.TemporaryDirectory(prefix="dllm_out_") as out_dir, \
            tempfile.TemporaryDirectory(prefix="dllm_sbx_") as work:
        (Path(work) / "main.py").write_text(source, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(Path(work) / "main.py", uid, uid)
        out_path, err_path = Path(out_dir) / "stdout", Path(out_dir) / "stderr"
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "HOME": work, "TMPDIR": work}
        start = time.monotonic()
        timed_out = False
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            proc = subprocess.Popen(
                [python, "-I", "-c", runner], cwd=work, env=env, stdin=subprocess.PIPE,
                stdout=out_f, stderr=err_f, start_new_session=True, close_fds=True,
                preexec_fn=_preexec(config, uid, netns))  # noqa: PLW1509
            try:
                proc.stdin.write((token + "\n").encode())
                proc.stdin.close()
            except OSError:  # the child died before reading
                pass
            try:
                proc.wait(timeout=config.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            # Kill the whole group either way: a program may exit and leave children behind.
            _kill_group(proc.pid)
            proc.wait()
            _reap_group(proc.pid)
        seconds = time.monotonic() - start
        stdout = _tail(out_path, config.output_bytes + 64)
        stderr = _tail(err_path, config.output_bytes)
    rc = proc.returncode
    lines = stdout.rstrip("\n").rsplit("\n", 1)
    has_token = bool(lines) and lines[-1] == token
    if has_token:
        stdout = lines[0] if len(lines) == 2 else ""
    passed = (not timed_out) and rc == 0 and has_token
    return RunResult(passed=passed, returncode=rc, timed_out=timed_out,
                     stdout=stdout[-config.output_bytes:], stderr=stderr, pid=proc.pid,
                     seconds=seconds)


def run_programs(sources: Sequence[str], config: SandboxConfig | None = None,
                 workers: int = 2) -> list[RunResult]:
    """:func:`run_program` over many sources with a bounded thread pool (results in order)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    config = config or SandboxConfig()
    _resolve(config)  # probe once before the threads start
    _can_unshare_net()
    _become_subreaper()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, config), sources))


def group_members(pgid: int, zombies: bool = False) -> list[tuple[int, int]]:
    """``(pid, parent pid)`` of processes in process group ``pgid`` (Linux ``/proc``), zombies
    included only if asked."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if pgrp == pgid and (zombies or state not in ("Z", "X")):
            found.append((int(entry), ppid))
    return found
