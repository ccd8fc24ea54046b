"""Run FFmpeg as a child process: no stdin, progress streamed, stderr tail kept, time limits enforced."""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .build import resolve_binary
from .messages import ffmpeg_messages
from .progress import Progress, ProgressParser

ProgressCallback = Callable[[Progress], None]


@dataclass
class RunResult:
    argv: list[str]
    returncode: int  # exit status; for a signal, the negative signal number (as in subprocess)
    stderr_tail: str
    wall_s: float
    cpu_s: float
    started_at: float = 0.0  # epoch seconds
    stopped_by: Optional[str] = (
        None  # "timeout" | "stall" | "cancelled" when we stopped it, else None
    )
    last_progress: Optional[Progress] = None

    @property
    def signal(self) -> Optional[int]:
        return -self.returncode if self.returncode < 0 else None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.stopped_by is None

    @property
    def messages(self) -> str:
        """The stderr tail without banners or names (`messages.ffmpeg_messages`): what rules read."""
        return ffmpeg_messages(self.stderr_tail, self.argv)


class FFmpegFailed(RuntimeError):
    """FFmpeg exited non-zero, died of a signal, or was stopped by the watchdog."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        how = (
            f"stopped by the watchdog ({result.stopped_by})"
            if result.stopped_by
            else f"killed by signal {result.signal}"
            if result.signal
            else f"exit status {result.returncode}"
        )
        last = result.stderr_tail.strip().splitlines()[-1:] or ["(no stderr)"]
        super().__init__(f"ffmpeg failed: {how}: {last[0]}")


@dataclass
class RunLimits:
    timeout_s: Optional[float] = None  # wall-clock limit for one run
    stall_s: Optional[float] = None  # no progress report for this long = stalled
    kill_grace_s: float = 10.0  # SIGTERM first (FFmpeg finalizes), SIGKILL after this
    stderr_lines: int = 60


@dataclass
class _Watch:
    last_progress: Optional[Progress] = None
    last_change: float = field(default_factory=time.monotonic)


def run_ffmpeg(
    args: Sequence[str],
    *,
    ffmpeg: str = "ffmpeg",
    cwd: Optional[Path] = None,
    duration_s: Optional[float] = None,
    limits: Optional[RunLimits] = None,
    on_progress: Optional[ProgressCallback] = None,
    cancel: Optional[threading.Event] = None,
) -> RunResult:
    """Run `ffmpeg <global options> *args` and wait for it. Raises FFmpegFailed unless it succeeded.

    Global options are always the same: `-nostdin` (never block on or eat a terminal), `-y` (we
    write into private scratch directories), machine-readable progress on stdout. Setting `cancel`
    stops the run as the watchdog does (a sibling process of the same encode has failed, so
    this one's output would be thrown away).
    """
    argv = [
        resolve_binary(ffmpeg),
        "-nostdin",
        "-hide_banner",
        "-y",
        "-nostats",
        "-progress",
        "pipe:1",
        *args,
    ]
    limits = limits or RunLimits()
    tail: collections.deque[str] = collections.deque(maxlen=limits.stderr_lines)
    watch = _Watch()
    parser = ProgressParser(duration_s)
    started_at, start = time.time(), time.monotonic()
    spawned, preexec = spawn_args(argv)
    proc = subprocess.Popen(
        spawned,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=preexec,
    )

    def read_progress() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            report = parser.feed(line)
            if report is None:
                continue
            if watch.last_progress is None or report.out_time_s != watch.last_progress.out_time_s:
                watch.last_change = time.monotonic()
            watch.last_progress = report
            if on_progress is not None:
                on_progress(report)

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip("\n"))

    readers = [threading.Thread(target=f, daemon=True) for f in (read_progress, read_stderr)]
    for t in readers:
        t.start()

    # A thread blocks in wait4, so the next step starts the moment FFmpeg exits (no polling
    # delay between the runs of a video); this one only checks the limits a few times a second.
    exited = _Exit(proc.pid)
    stopped_by: Optional[str] = None
    while not exited.wait(0.2):
        now = time.monotonic()
        if cancel is not None and cancel.is_set():
            stopped_by = "cancelled"
        elif limits.timeout_s is not None and now - start > limits.timeout_s:
            stopped_by = "timeout"
        elif limits.stall_s is not None and now - watch.last_change > limits.stall_s:
            stopped_by = "stall"
        if stopped_by:
            _stop(proc.pid, limits.kill_grace_s, exited)
            break
    status, rusage = exited.status, exited.rusage
    for t in readers:
        t.join(timeout=5)
    proc.returncode = status  # reaped by os.wait4, tell Popen so it does not wait again
    result = RunResult(
        argv=argv,
        returncode=status,
        stderr_tail="\n".join(tail),
        wall_s=time.monotonic() - start,
        cpu_s=rusage.ru_utime + rusage.ru_stime if rusage else 0.0,
        started_at=started_at,
        stopped_by=stopped_by,
        last_progress=watch.last_progress,
    )
    if not result.ok:
        raise FFmpegFailed(result)
    return result


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@functools.lru_cache(maxsize=1)
def _setpriv() -> Optional[list[str]]:
    """util-linux's `setpriv` (2.33+; Debian's is essential) with the options every FFmpeg runs
    under: a parent-death signal, and, where this process may drop it (root), no CAP_SYS_NICE.
    SVT-AV1 1.4 gives its threads and FFmpeg's SCHED_FIFO priority 99 whenever it can (seen here
    as root), and would then preempt everything else on the machine: Dagster, the other lanes,
    this watchdog. Without the capability it runs at normal priority, with the same bytes."""
    found = shutil.which("setpriv")
    if found is None:
        return None
    usage = subprocess.run([found, "--help"], capture_output=True, text=True, check=False).stdout
    if "--pdeathsig" not in usage:
        return None
    prefix = [found, "--pdeathsig", "KILL"]
    unniced = [*prefix, "--bounding-set", "-sys_nice"]
    dropped = subprocess.run([*unniced, "--", "true"], capture_output=True, check=False)
    return unniced if dropped.returncode == 0 else prefix


def spawn_args(argv: list[str]) -> tuple[list[str], Optional[Callable[[], None]]]:
    """(argv, preexec_fn) for Popen, so that the kernel SIGKILLs the child when the thread that
    started it ends: an FFmpeg never outlives a killed run (`kill -9`, the OOM killer). Its own
    session keeps it out of the terminal's signals, so nothing else would stop it.

    `setpriv --pdeathsig KILL` sets the signal and execs FFmpeg, and Python still spawns with
    vfork; a `preexec_fn` (the fallback where there is no such setpriv) makes Python fork,
    copying the page tables of this large process: ~35 ms a run here instead of ~1 ms. The
    calling thread must outlive the child, as `run_ffmpeg`'s does (it waits for the exit)."""
    setpriv = _setpriv()
    if setpriv is not None:
        return [*setpriv, "--", *argv], None
    if _libc is None:
        return argv, None
    parent = os.getpid()

    def preexec() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request was in place
            os.kill(os.getpid(), signal.SIGKILL)

    return argv, preexec


def _decode_status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


class _Exit:
    """Reaps a child in a thread (os.wait4 also gives its CPU time); `wait` says if it has exited."""

    def __init__(self, pid: int) -> None:
        self.status: int = 0
        self.rusage = None
        self._done = threading.Event()
        threading.Thread(
            target=self._reap, args=(pid,), name=f"ffmpeg-wait-{pid}", daemon=True
        ).start()

    def _reap(self, pid: int) -> None:
        _, raw, self.rusage = os.wait4(pid, 0)
        self.status = _decode_status(raw)
        self._done.set()

    def wait(self, seconds: float) -> bool:
        return self._done.wait(seconds)


def _stop(pid: int, grace_s: float, exited: _Exit) -> None:
    """One SIGTERM lets FFmpeg finalize; some builds ignore it, so SIGKILL after the grace."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if not exited.wait(grace_s):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        exited.wait(30.0)
