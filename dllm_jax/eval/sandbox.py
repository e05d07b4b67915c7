"""Run untrusted candidate programs (with their tests) in an isolated, limited process tree.

Each program runs under bubblewrap (``bwrap``) in fresh user, PID, mount, network, IPC, UTS and
cgroup namespaces. Its file system shows, read-only, the host's system directories (``/usr``,
``/etc`` and the top-level ``/bin`` and ``/lib*`` links or directories) and the interpreter's
own prefixes, and nothing else of the host (no ``/home``, ``/root``, ``/var``, ``/work``, ...);
plus a fresh ``/proc`` (the sandbox's own processes only), a read-only ``/dev`` with the usual
devices, and one writable, size-limited tmpfs at ``/tmp`` (the working directory). The network
namespace holds only its own loopback device. The runner is PID 1 of the namespace and runs the
program in a child; when that child exits, the runner exits and the kernel kills everything
else in the namespace. On a timeout the harness SIGKILLs the runner through a pidfd. bwrap exits
only after reaping the runner, so :func:`run_program` returns only once the namespace is empty.
When the harness runs as root, bwrap itself runs as ``nobody``, so the program has no
capabilities and can read only what ``nobody`` may read. Resource limits (CPU seconds, address
space, processes, file size, open files) are set by the runner before the program starts; the
process limit is counted inside the sandbox's own user namespace, so parallel runs do not share
it. ``docs/safety.md`` says what this does and does not guarantee.

When isolation is unavailable (no ``bwrap``, or user namespaces disabled) programs are refused
with :class:`dllm_jax.errors.ConfigError`, unless ``SandboxConfig.allow_unsafe`` is set: then
they run as a plain child process with the same resource limits, as ``nobody`` when the
harness is root, in a new process group killed on exit -- a courtesy, not a boundary.

A Python preamble (``SandboxConfig.guards``) also replaces ``socket``, ``os.system``,
``os.fork``, ``subprocess`` and file removal outside the working directory by raisers: defence
in depth only (``posix``, ``_socket`` and ``ctypes`` walk around it).

A program passes only if it exits with status 0 *and* the runner printed a per-run random
sentinel after the program's code (tests included) finished, so ``sys.exit(0)`` before the
tests does not pass. The sentinel reaches the runner over a pipe, never in the program's source
or command line; it stops accidental early exits, not a program that searches the runner's
frame for it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import BinaryIO

from dllm_jax.errors import ConfigError

_NOBODY = 65534
_SANDBOX_DIR = "/tmp"  # the program's working directory inside the sandbox (a fresh tmpfs)
_TEARDOWN_S = 10.0  # how long a killed sandbox may take to disappear before the group is killed

# Reads the sentinel and program from stdin, writes main.py (for tracebacks), sets the limits,
# and forks: the child installs the guards, runs the program and prints the sentinel; the parent
# (the namespace's init, which ignores signals sent from inside) waits. No sentinel in here.
_RUNNER = r'''
import sys
def _dllm_run():
    import os, resource
    token = sys.stdin.buffer.readline().decode().strip()
    src = sys.stdin.buffer.read().decode("utf-8")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    sys.stdin = open(os.devnull)
    with open("main.py", "w", encoding="utf-8") as f:
        f.write(src)
    for which, value in LIMITS:
        cap = resource.getrlimit(which)[1]  # never above what we were given
        value = value if cap == resource.RLIM_INFINITY else min(value, cap)
        resource.setrlimit(which, (value, value))
    pid = os.fork()
    if pid:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os._exit(code if code >= 0 else 128 - code)
    if GUARDS:
        _dllm_guard()
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
      timeout_s: wall-clock seconds before the sandbox is killed.
      cpu_s: CPU-seconds limit per process (``RLIMIT_CPU``); default ``int(timeout_s) + 1``;
        exceeding it kills the process.
      memory_bytes: address-space limit per process (``RLIMIT_AS``).
      max_processes: ``RLIMIT_NPROC``: processes the program may have at once (counted per
        sandbox; without isolation, per uid, and not enforced for root).
      file_bytes: largest file the program may write (``RLIMIT_FSIZE``), stdout included.
      open_files: ``RLIMIT_NOFILE``.
      tmp_bytes: size of the program's writable ``/tmp`` (its working directory).
      python: interpreter; default the first of ``sys.executable``, ``python3`` on ``PATH``
        and ``/usr/bin/python3`` that the sandbox user can run.
      drop_privileges: when the harness runs as root, run the sandbox as ``nobody`` (turning
        this off lets the program read root-only files and lifts the process limit).
      guards: install the Python-level preamble (tests turn it off to check the OS limits).
      output_bytes: how much of stdout / stderr is kept in the result.
      allow_unsafe: when namespace isolation is unavailable, run programs anyway as plain
        child processes (rlimits only) instead of raising :class:`ConfigError`.
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_bytes: int = 1 << 30
    max_processes: int = 32
    file_bytes: int = 16 << 20
    open_files: int = 256
    tmp_bytes: int = 64 << 20
    python: str | None = None
    drop_privileges: bool = True
    guards: bool = True
    output_bytes: int = 4096
    allow_unsafe: bool = False

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ConfigError(f"SandboxConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ConfigError(f"SandboxConfig.cpu_s must be >= 1, got {self.cpu_s}")
        for name in ("memory_bytes", "max_processes", "file_bytes", "open_files", "tmp_bytes",
                     "output_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SandboxConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Outcome of one program.

    Attributes:
      passed: exit status 0 and the sentinel was printed after the program finished.
      returncode: the program's exit status; under isolation a program killed by signal N
        reports 128 + N (bubblewrap's convention), without it -N.
      timed_out: the wall-clock timeout fired.
      stdout, stderr: the last ``output_bytes`` of each (sentinel removed).
      pid: the pid of the sandbox's outermost process (bwrap, or the interpreter without
        isolation), which is also its process-group id.
      seconds: wall-clock time.
    """

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    pid: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class _Launch:
    """``prefix`` (bwrap and options; empty: unisolated) runs ``python`` as ``uid`` (None: ours)."""

    prefix: tuple[str, ...]
    python: str
    uid: int | None


_SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_PREFIXES = "import sys; print(*{sys.prefix, sys.base_prefix, sys.exec_prefix}, sep='\\n')"


def _system_view() -> list[str]:
    """bwrap options showing the system directories read-only (top-level links kept as links)."""
    args = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _python_dirs(python: str, prefixes: str) -> list[str]:
    """The interpreter's own directories (``prefixes``: its sys prefixes, one a line)
    that the system view does not already show, outermost only."""
    shown = [os.path.realpath(d) for d in _SYSTEM_DIRS if os.path.isdir(d)]
    found = [*prefixes.splitlines(), os.path.dirname(os.path.abspath(python)),
             os.path.dirname(os.path.realpath(python))]
    kept: list[str] = []
    for d in sorted({os.path.realpath(d) for d in found}):
        if d != "/" and not any(d == k or d.startswith(k.rstrip("/") + "/")
                                for k in shown + kept):
            kept.append(d)
    return kept


def _bwrap_prefix(bwrap: str, python_dirs: Sequence[str], tmp_bytes: int) -> tuple[str, ...]:
    # --as-pid-1: the runner is init, and bwrap exits only after reaping it, so once the kernel
    # has emptied the namespace (with its own init, bwrap exits as soon as the program does).
    binds = [a for d in python_dirs for a in ("--ro-bind", d, d)]
    return (bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--as-pid-1", "--cap-drop", "ALL", "--uid", str(_NOBODY), "--gid", str(_NOBODY),
            *_system_view(), *binds, "--proc", "/proc", "--dev", "/dev",
            "--size", str(tmp_bytes), "--tmpfs", _SANDBOX_DIR, "--remount-ro", "/dev",
            "--remount-ro", "/", "--chdir", _SANDBOX_DIR)


@functools.cache
def _probe(argv: tuple[str, ...], uid: int | None, code: str = "pass") -> tuple[str, str | None]:
    """Runs ``argv`` (ending in an interpreter) on ``code``: (stdout, None), or ("", why not)."""
    try:
        ids = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
        r = subprocess.run([*argv, "-I", "-c", code], env={"PATH": "/usr/bin:/bin"},
                           capture_output=True, timeout=60, cwd="/", **ids)
    except (OSError, subprocess.SubprocessError) as e:
        return "", str(e)
    if r.returncode == 0:
        return r.stdout.decode("utf-8", "replace"), None
    lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
    return "", lines[-1] if lines else f"exit status {r.returncode}"


def _sandbox_uid(config: SandboxConfig) -> int | None:
    return _NOBODY if os.geteuid() == 0 and config.drop_privileges else None


def _pythons(config: SandboxConfig) -> list[str]:
    if config.python:
        return [config.python]
    found = [sys.executable, shutil.which("python3") or "", "/usr/bin/python3"]
    return [p for p in dict.fromkeys(found) if p]


def _isolated(config: SandboxConfig) -> tuple[_Launch | None, str | None]:
    """The isolated launch with the first interpreter that works in the sandbox, or (None, why
    there is none)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, "bubblewrap (bwrap) is not installed or not on PATH"
    uid = _sandbox_uid(config)
    problems = []
    for python in _pythons(config):
        prefixes, problem = _probe((python,), uid, _PREFIXES)
        if problem is None:
            prefix = _bwrap_prefix(bwrap, _python_dirs(python, prefixes), config.tmp_bytes)
            problem = _probe((*prefix, python), uid)[1]
            if problem is None:
                return _Launch(prefix, python, uid), None
        problems.append(f"{python}: {problem}")
    return None, f"bwrap cannot start a sandbox here ({problems[0]})"


def isolation_problem(config: SandboxConfig | None = None) -> str | None:
    """Why programs cannot run isolated here (None: they can)."""
    return _isolated(config or SandboxConfig())[1]


def _launch(config: SandboxConfig) -> _Launch:
    """Isolated when possible; otherwise unisolated if allowed, else a ConfigError."""
    launch, problem = _isolated(config)
    if launch is not None:
        return launch
    if not config.allow_unsafe:
        raise ConfigError(
            f"code execution needs process isolation, which is unavailable: {problem}; "
            "install bubblewrap (apt-get install bubblewrap) or explicitly allow running "
            "model-written code without isolation (SandboxConfig(allow_unsafe=True), "
            "CLI --unsafe-no-isolation)")
    _warn_unsafe(problem)
    uid = _sandbox_uid(config)
    for python in _pythons(config):
        if _probe((python,), uid)[1] is None:
            return _Launch((), python, uid)
    return _Launch((), _pythons(config)[0], None)  # the sandbox uid cannot run any of them


@functools.cache
def _warn_unsafe(problem: str) -> None:
    warnings.warn(f"running model-written code WITHOUT isolation ({problem})", stacklevel=3)


def _runner(config: SandboxConfig) -> str:
    cpu = config.cpu_s or int(config.timeout_s) + 1
    limits = [(resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, config.memory_bytes),
              (resource.RLIMIT_FSIZE, config.file_bytes), (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_NPROC, config.max_processes),
              (resource.RLIMIT_NOFILE, config.open_files)]
    return (_RUNNER.replace("if GUARDS:", f"if {config.guards!r}:")
            .replace("in LIMITS:", f"in {limits!r}:"))


def _init_pidfd(fd: int, deadline: float) -> int | None:
    """A pidfd of the sandbox's init, whose host pid bwrap writes to ``fd`` (``--info-fd``) as
    a flat JSON object (None: not seen before ``deadline``, bwrap failed, or already gone)."""
    data = b""
    while b"}" not in data:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            return None
        data += chunk
    try:
        return os.pidfd_open(json.loads(data[:data.index(b"}") + 1])["child-pid"])
    except OSError:
        return None


def _kill_sandbox(proc: subprocess.Popen, pidfd: int | None) -> None:
    """SIGKILLs the sandbox's init (the kernel then kills the rest of its namespace) and waits
    for bwrap, which exits only once the namespace is empty; kills bwrap's group if needed."""
    if pidfd is None:  # bwrap never reported its init: kill what shares its group
        _kill_group(proc.pid)
    else:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=_TEARDOWN_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()


def _start(launch: _Launch, config: SandboxConfig, cwd: str, home: str, out: BinaryIO,
           err: BinaryIO, info_w: int | None = None) -> subprocess.Popen:
    """Starts the runner in a new session (under bwrap, reporting to ``info_w``, if isolated);
    ``home`` is the program's working directory as it sees it."""
    ids = {} if launch.uid is None else {"user": launch.uid, "group": launch.uid,
                                         "extra_groups": []}
    argv = [launch.python, "-I", "-c", _runner(config)]
    if launch.prefix:
        argv = [launch.prefix[0], "--info-fd", str(info_w), *launch.prefix[1:], *argv]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "HOME": home, "TMPDIR": home}
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out,
                            stderr=err, start_new_session=True, close_fds=True,
                            pass_fds=() if info_w is None else (info_w,), **ids)


def _send(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except OSError:  # the child died before reading
        pass


def _run_isolated(launch: _Launch, config: SandboxConfig, payload: bytes, out: BinaryIO,
                  err: BinaryIO) -> tuple[subprocess.Popen, bool]:
    deadline = time.monotonic() + config.timeout_s
    info_r, info_w = os.pipe()
    try:
        proc = _start(launch, config, "/", _SANDBOX_DIR, out, err, info_w)
    except BaseException:
        os.close(info_r)
        raise
    finally:
        os.close(info_w)  # bwrap holds its own copy; EOF once it is done with it
    pidfd = None
    try:
        try:
            pidfd = _init_pidfd(info_r, deadline)
        finally:
            os.close(info_r)
        _send(proc, payload)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return proc, False
        except subprocess.TimeoutExpired:
            return proc, True
    finally:
        if proc.returncode is None:  # timed out, or an error on our side
            _kill_sandbox(proc, pidfd)
        if pidfd is not None:
            os.close(pidfd)


def _run_unisolated(launch: _Launch, config: SandboxConfig, payload: bytes, out: BinaryIO,
                    err: BinaryIO) -> tuple[subprocess.Popen, bool]:
    with tempfile.TemporaryDirectory(prefix="dllm_sbx_") as work:
        if launch.uid is not None:
            os.chown(work, launch.uid, launch.uid)
        proc = _start(launch, config, work, work, out, err)
        timed_out = True
        try:
            _send(proc, payload)
            proc.wait(timeout=config.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Kill the whole group either way: a program may exit and leave children behind
            # (those that left the group survive: this mode is no boundary).
            _kill_group(proc.pid)
            proc.wait()
    return proc, timed_out


def run_program(source: str, config: SandboxConfig | None = None) -> RunResult:
    """Runs ``source`` (a complete program: candidate code followed by its tests).

    Args:
      source: Python source; it passes if it runs to the end without an exception.
      config: limits; default :class:`SandboxConfig`.

    Returns:
      :class:`RunResult`. Never raises for anything the program does.

    Raises:
      ConfigError: isolation is unavailable and ``config.allow_unsafe`` is not set.
    """
    config = config or SandboxConfig()
    launch = _launch(config)
    token = secrets.token_hex(16)
    payload = (token + "\n" + source).encode("utf-8")
    run = _run_isolated if launch.prefix else _run_unisolated
    start = time.monotonic()
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        proc, timed_out = run(launch, config, payload, out_f, err_f)
        seconds = time.monotonic() - start
        stdout = _tail(out_f, config.output_bytes + 64)
        stderr = _tail(err_f, config.output_bytes)
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
        raise ConfigError(f"workers must be >= 1, got {workers}")
    config = config or SandboxConfig()
    _launch(config)  # probe (and refuse) once before the threads start
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, config), sources))


def _tail(f: BinaryIO, n: int) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - n))
    return f.read().decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
