"""Clean up at once after `mpegflow run` is killed (`kill -9`, the OOM killer).

A killed process cleans up nothing: its FFmpeg processes die with it (parent-death signal), but
its Dagster run stays "started" and its scratch stays on disk until something else looks. So
`mpegflow run` starts this process beside itself, in its own session, holding the read end
of a pipe whose write end only the run holds. The run writes `done` before it exits; if the
pipe closes without it, the run died, and this process marks the run failed and removes the
scratch it left (`runs.fail_abandoned_runs`, `storage.collect_abandoned_scratch`: the same
checks the next run makes, in case this process was killed too).

It imports what it needs (Dagster: about 2 CPU-s) while the run works, at the lowest CPU
priority, so that after a death it is done in a fraction of a second instead of seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

DONE = b"done"


def watch_this_process(dagster_home: str, work_dir: str) -> Callable[[], None]:
    """Start the survivor; returns the function to call when this process ends normally."""
    read_end, write_end = os.pipe()  # neither end is inherited by FFmpeg (non-inheritable fds)
    try:
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), dagster_home, work_dir],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(read_end)

    def release() -> None:
        os.write(write_end, DONE)
        os.close(write_end)

    return release


def _wait_for_the_run(dagster_home: str, work_dir: str) -> None:
    os.nice(19)  # never in FFmpeg's way
    os.environ["DAGSTER_HOME"] = dagster_home
    from dagster import DagsterInstance

    from mpegflow_dagster.runs import fail_abandoned_runs
    from mpegflow_dagster.storage import collect_abandoned_scratch

    if sys.stdin.buffer.read() == DONE:  # blocks until the run exits or dies
        return
    with DagsterInstance.get() as instance:
        failed = fail_abandoned_runs(instance)
    removed, size = collect_abandoned_scratch(Path(work_dir))
    print(
        f"mpegflow: the run process died; marked failed: {', '.join(failed) or 'none'}; "
        f"removed {removed} scratch directories ({size / 1e6:.1f} MB)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.path.pop(0)  # this package's directory: its modules must not shadow top-level names
    _wait_for_the_run(*sys.argv[1:3])
