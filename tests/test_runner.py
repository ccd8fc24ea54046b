"""The FFmpeg runner and probe, on real FFmpeg."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import processes_with, wait_for

from mpegflow_dagster.media.build import FFmpegNotFound, detect_build
from mpegflow_dagster.media.probe import ProbeError, probe
from mpegflow_dagster.media.runner import FFmpegFailed, RunLimits, run_ffmpeg


def test_progress_is_reported_and_cpu_time_measured(make_source, tmp_path):
    src = make_source(duration_s=3.0)
    reports = []
    result = run_ffmpeg(
        [
            "-i",
            f"file:{src}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-f",
            "mp4",
            f"file:{tmp_path / 'o.mp4'}",
        ],
        duration_s=3.0,
        on_progress=reports.append,
    )
    assert result.ok and result.cpu_s > 0 and result.wall_s > 0
    assert reports[-1].done and reports[-1].percent == pytest.approx(100, abs=5)
    assert "-nostdin" in result.argv and "-y" in result.argv


def test_failure_keeps_the_stderr_tail(tmp_path):
    with pytest.raises(FFmpegFailed) as err:
        run_ffmpeg(["-i", f"file:{tmp_path / 'missing.mp4'}", "-f", "null", "-"])
    assert err.value.result.returncode != 0
    assert "No such file or directory" in err.value.result.stderr_tail
    assert "No such file or directory" in str(err.value)


@pytest.mark.parametrize(
    "limits, reason",
    [
        (RunLimits(timeout_s=0.5, kill_grace_s=0.5), "timeout"),
        (RunLimits(stall_s=0.5, kill_grace_s=0.5), "stall"),
    ],
)
def test_watchdog_stops_runaway_and_stalled_runs(tmp_path, limits, reason):
    # -re paces reading at real time: a 60 s source takes 60 s, far past the limit.
    # The stall case reads a FIFO that never delivers: FFmpeg makes no progress at all, and may
    # not answer SIGTERM while blocked opening it (5.1 does not), so the SIGKILL after the grace
    # ends it: a grace of 0.5 s instead of the default 10 s keeps the test short.
    if reason == "stall":
        import os

        fifo = tmp_path / "never.ts"
        os.mkfifo(fifo)
        args = ["-f", "mpegts", "-i", f"file:{fifo}", "-f", "null", "-"]
    else:
        args = [
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=25:duration=60",
            "-f",
            "null",
            "-",
        ]
    with pytest.raises(FFmpegFailed) as err:
        run_ffmpeg(args, limits=limits)
    result = err.value.result
    assert result.stopped_by == reason
    assert (
        result.wall_s < (limits.timeout_s or limits.stall_s) + limits.kill_grace_s + 5
    )  # 5 s: a loaded host


def test_probe_reads_streams_and_treats_odd_names_as_plain_files(make_source):
    for odd in ("-starts-with-dash", "concat:a|b", "pipe:1", "with space"):
        src = make_source(odd, duration_s=2.0)
        info = probe(src)
        assert info.video.width == 640 and info.video.height == 360
        assert info.audio is not None and info.duration == pytest.approx(2.0, abs=0.2)


def test_probe_rejects_non_media_with_a_reason(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ProbeError, match="junk.mp4"):
        probe(junk)


def test_build_detection_and_missing_binary(tmp_path):
    build = detect_build("ffmpeg")
    assert build.major >= 5 and build.version and len(build.build_hash) == 16
    assert "libavcodec" in build.libraries
    with pytest.raises(FFmpegNotFound, match="MPEGFLOW_FFMPEG"):
        detect_build(str(tmp_path / "no-ffmpeg"))
    fake = tmp_path / "fake-ffmpeg"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(FFmpegNotFound, match="does not look like FFmpeg"):
        detect_build(str(fake))
    assert shutil.which("ffprobe")


@pytest.mark.slow  # each case starts a Python that imports the package, Dagster included: about 3 s
@pytest.mark.parametrize("fallback", [False, True], ids=["setpriv", "prctl-in-child"])
def test_ffmpeg_dies_with_the_process_that_ran_it(tmp_path, fallback):
    """kill -9 of the Python process running FFmpeg: the kernel kills FFmpeg too, through
    `setpriv --pdeathsig` or, where there is no such setpriv, a prctl in the forked child."""
    marker = f"testsrc2=size=160x120:rate=25:duration={61 + fallback}"  # one FFmpeg per case
    script = (
        f"from mpegflow_dagster.media import runner\n"
        f"{'runner._setpriv = lambda: None' if fallback else ''}\n"
        f"runner.run_ffmpeg(['-re', '-f', 'lavfi', '-i', '{marker}', '-f', 'null', '-'])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    [ffmpeg] = wait_for(lambda: processes_with(marker, "-progress"), 60, "FFmpeg to start")
    assert (
        int(open(f"/proc/{ffmpeg}/stat").read().rsplit(")", 1)[1].split()[1]) == child.pid
    )  # its parent
    assert child.poll() is None
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    wait_for(
        lambda: ffmpeg not in processes_with(marker) or None, 5, "FFmpeg to die with its parent"
    )


def test_an_svt_av1_encode_runs_at_normal_priority_even_as_root(tmp_path):
    """SVT-AV1 1.4 gives its threads SCHED_FIFO priority 99 when it may (as root); the runner
    takes that right away (setpriv), so an AV1 encode cannot starve the machine."""
    out = tmp_path / "svt.mp4"
    policies: set[int] = set()

    def look(_progress) -> None:
        for pid in processes_with("libsvtav1", str(out)):
            for task in Path(f"/proc/{pid}/task").iterdir():
                try:  # field 41 of stat (after the command in parentheses): the policy
                    policies.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[38]))
                except (OSError, IndexError, ValueError):
                    pass

    args = ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=4"]
    args += ["-c:v", "libsvtav1", "-preset", "10", "-crf", "40", f"file:{out}"]
    run_ffmpeg(args, duration_s=4.0, on_progress=look)
    assert policies, "no thread of the encode was seen"
    assert policies == {0}, policies  # SCHED_OTHER only; 1 is SCHED_FIFO
