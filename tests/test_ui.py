"""The Dagster UI in a real browser: `dagster dev` and `mpegflow previews` as a user starts them,
Debian's headless Chromium driven by playwright-core (tests/ui, installed by `make browser`).
A video that went through shows its poster on its thumbnails asset, a frame on a rendition, its
asset checks on the rendition's Checks tab and its ladder on hls; a video whose probe failed
shows that failure on its probe asset."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import corpus
import pytest
from http_receiver import free_port
from pipeline_helpers import BIN, ROOT, cli_env, run_cli, wait_for

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

UI = ROOT / "tests" / "ui"
CHROMIUM = "/usr/bin/chromium"


@contextmanager
def server(argv: list[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    """A server process in its own process group, until the block ends; then the whole group is
    stopped (SIGINT, as Ctrl-C would, then SIGKILL for whatever is left), whatever happened."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # `dagster dev` ignores SIGINT and SIGTERM when started with SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, f"{argv[1]} exited: {log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                return True
            except OSError as exc:  # a 404 still means it is serving
                return getattr(exc, "code", None) == 404

        wait_for(up, 180, f"{' '.join(argv[:2])} to serve")
        yield
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children the leader left behind
        except ProcessLookupError:
            pass
        proc.wait()


def browse(ui: str, previews: str, out: Path, pages: list[dict]) -> dict:
    """What Chromium shows on each page (tests/ui/check_assets.mjs), screenshots into `out`."""
    assert (UI / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is not installed: run `make browser` (Chromium, Node and tests/ui)"
    )
    job = out / "job.json"
    job.write_text(
        json.dumps(
            {"ui": ui, "previews": previews, "out": str(out), "chromium": CHROMIUM, "pages": pages}
        )
    )
    proc = subprocess.run(
        ["node", str(UI / "check_assets.mjs"), str(job)],
        cwd=UI,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_ui_shows_the_poster_and_a_failed_probe(tmp_path, make_source):
    previews_port, ui_port = free_port(), free_port()
    previews = f"http://127.0.0.1:{previews_port}"
    env = {"MPEGFLOW_PREVIEWS_DIR": str(tmp_path / "previews"), "MPEGFLOW_PREVIEWS_URL": previews}

    (tmp_path / "in").mkdir()
    bad = corpus.random_bytes(tmp_path / "in")  # noise.mp4: no container ffprobe can read
    failed = run_cli(["run", str(bad), "--out", str(tmp_path / "out"), "--json"], tmp_path, **env)
    assert failed.returncode == 1, failed.stderr[-3000:]
    failed_report = json.loads(failed.stdout)
    assert failed_report["stages"]["probe"]["status"] == "failed"
    # the good video last: a Checks tab details its checks' latest execution, of any video
    # (the failed one's run planned them and never ran them; the list counts that as Failed)
    good = make_source("clip", duration_s=2.0, width=640, height=360, captions=True)
    ran = run_cli(["run", str(good), "--out", str(tmp_path / "out"), "--json"], tmp_path, **env)
    assert ran.returncode == 0, ran.stderr[-3000:]

    shots = tmp_path / "screens"
    shots.mkdir()
    env = cli_env(tmp_path, **env)
    with (
        server(
            [str(BIN / "mpegflow"), "previews", "--port", str(previews_port)],
            env,
            f"{previews}/",
            tmp_path / "previews.log",
        ),
        server(
            [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
            + ["-p", str(ui_port)],
            env,
            f"http://127.0.0.1:{ui_port}/server_info",
            tmp_path / "dagster-dev.log",
        ),
    ):
        seen = browse(
            f"http://127.0.0.1:{ui_port}",
            previews,
            shots,
            [
                {
                    "name": "thumbnails",
                    "path": "/assets/vod/thumbnails?view=partitions&partition=clip",
                    "picture": True,
                },
                {
                    "name": "rendition_240p",
                    "path": "/assets/vod/rendition_240p?view=partitions&partition=clip",
                    "picture": True,
                },
                {"name": "hls", "path": "/assets/vod/hls?view=partitions&partition=clip"},
                # the rendition's asset checks, as its Checks tab lists them
                {
                    "name": "rendition_checks",
                    "path": "/assets/vod/rendition_240p?view=checks",
                    "ready": "decode_health",
                },
                {"name": "probe", "path": "/assets/vod/probe?view=partitions&partition=noise"},
            ],
        )

    [poster] = [i for i in seen["thumbnails"]["images"] if i["alt"] == "poster"]
    assert poster["src"].startswith(f"{previews}/") and poster["src"].endswith(".jpg")
    assert poster["complete"] and poster["naturalWidth"] == 320, poster
    assert (tmp_path / "previews" / poster["src"].rsplit("/", 1)[1]).is_file()
    [frame] = [i for i in seen["rendition_240p"]["images"] if i["alt"] == "frame"]
    assert frame["naturalWidth"] == 320 and frame["src"].startswith(f"{previews}/"), frame
    assert not seen["thumbnails"]["failedRequests"]
    # The packaged ladder is a table: a header and one row per variant.
    hls = seen["hls"]["text"]
    assert "peak_kbps" in hls and "426x240" in hls and "avc1.42" in hls, hls[-2000:]

    # The failed video's probe: its run named as failed (Dagster: "Run <id> failed, and did not
    # materialize this asset"), and the partition counted among the failed ones.
    probe, run = seen["probe"]["text"], failed_report["run_id"][:8]
    assert re.search(rf"{run}.{{0,80}}failed|failed.{{0,80}}{run}", probe, re.I | re.S), probe
    assert "Failed (1)" in probe
    checks = seen["rendition_checks"]["text"]
    for name in ("streams_and_duration", "keyframes", "decode_health", "quality"):
        assert name in checks, checks[-3000:]
    # the first check's latest execution, of video clip: its result and its figure
    assert re.search(r"Evaluation result\s+Passed", checks), checks[-3000:]
    assert "decoded cleanly" in checks and "This is a blocking asset check." in checks
    for name in ("thumbnails", "rendition_240p", "hls", "probe", "rendition_checks"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
