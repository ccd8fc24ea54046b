"""Faults a production deployment meets, replayed as a user meets them: through `mpegflow` in its
own process on a persistent instance, with real FFmpeg (issue 22)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus

from mpegflow_dagster.storage import SCRATCH_MARKER

from pipeline_helpers import BIN, ROOT, cli_env, ffmpeg_wrapper, run_cli


def _processes_with(*texts: str) -> list[int]:
    """Live (not zombie) processes whose command line contains every one of `texts`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if not all(text in cmdline for text in texts):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def test_kill_9_of_a_run_leaves_no_ffmpeg_and_the_next_run_cleans_up(tmp_path, make_source):
    source = make_source("long", duration_s=12.0, width=320, height=240)
    work = tmp_path / "work"
    # Real FFmpeg, reading the source at its own pace: the encode lasts 12 s, time to kill it.
    slow = ffmpeg_wrapper(tmp_path, options="-re")
    run = subprocess.Popen([str(BIN / "mpegflow"), "run", str(source), "--out", str(tmp_path / "out"), "--json"],
                           cwd=ROOT, env=cli_env(tmp_path, MPEGFLOW_FFMPEG=str(slow)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ffmpegs = _wait_for(lambda: _processes_with("libx264", f"file:{work}"), 120, "the encode to start")
    time.sleep(1.0)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    # FFmpeg dies with its parent, at once.
    _wait_for(lambda: not any(pid in _processes_with("ffmpeg") for pid in ffmpegs) or None, 5, "FFmpeg to exit")
    left = [m.parent for m in work.glob(f"*/{SCRATCH_MARKER}")]
    assert left, "the killed run should have left scratch behind (else this test proves nothing)"
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        [killed] = instance.get_runs()
        assert killed.status == DagsterRunStatus.STARTED

    # `why` marks the dead run failed; the next run collects its scratch and encodes anew.
    why = run_cli(["why", "long", "--json"], tmp_path)
    assert why.returncode == 0, why.stderr[-2000:]
    with DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE
    again = run_cli(["run", str(source), "--out", str(tmp_path / "out"), "--json"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["status"] == "succeeded"
    assert not any(path.exists() for path in left)
    assert not list(work.glob(f"*/{SCRATCH_MARKER}"))
