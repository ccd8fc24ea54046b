"""Build a test project on temp directories and check media with real FFmpeg."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

from mpegflow_dagster.project import Project, Settings
from mpegflow_dagster.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def temp_project(base: Path, **ffmpeg_settings) -> Project:
    """The repository's specs and presets, with storage, scratch and delivery under `base`."""
    repo = Project.load(ROOT)
    settings = Settings(
        storage_dir="storage", work_dir="work", delivery_dir="delivery", ffmpeg=ffmpeg_settings
    )
    return Project(root=ROOT, specs=repo.specs, settings=settings.resolved(base))


def project_with(
    tmp_path: Path,
    spec_changes: dict,
    preset_files: Optional[dict[str, str]] = None,
    **ffmpeg_settings,
) -> Project:
    """The default spec with changes, extra presets, and storage under tmp_path."""
    presets = tmp_path / "resources" / "presets"
    presets.mkdir(parents=True)
    for src in (ROOT / "resources" / "presets").glob("*.yaml"):
        (presets / src.name).write_text(src.read_text())
    for name, text in (preset_files or {}).items():
        (presets / name).write_text(text)
    raw = yaml.safe_load((ROOT / "resources" / "pipelines" / "vod.yaml").read_text())
    raw.update(spec_changes)
    spec_file = tmp_path / "resources" / "pipelines" / "vod.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text(yaml.safe_dump(raw))
    base = temp_project(tmp_path, **ffmpeg_settings)
    return base.model_copy(update={"specs": [load_spec(spec_file, presets)]})


def write_instance_config(home: Path) -> Path:
    """`home/dagster.yaml` as `make install` writes it into .dagster_home (resources/dagster.yaml)."""
    home.mkdir(parents=True, exist_ok=True)
    template = (ROOT / "resources" / "dagster.yaml").read_text()
    config = home / "dagster.yaml"
    config.write_text(template.replace("@DAGSTER_HOME@", str(home.resolve())))
    return config


def cli_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of `mpegflow` on an instance and storage under `tmp_path`, with the
    instance config `make install` writes (the CLI runs on the config we ship)."""
    write_instance_config(tmp_path / "home")
    return {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "MPEGFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "MPEGFLOW_WORK_DIR": str(tmp_path / "work"),
        "MPEGFLOW_EVENTS_PATH": str(tmp_path / "events.jsonl"),
        **env,
    }


def run_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mpegflow"), *args],
        cwd=ROOT,
        env=cli_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def ffmpeg_wrapper(tmp_path: Path, body: str = "", options: str = "") -> Path:
    """A real-FFmpeg harness: runs `body` (bash), then execs the real binary with `options`
    before the pipeline's arguments (e.g. `-re`: read the first input at its own pace)."""
    script = tmp_path / "ffmpeg-harness"
    script.write_text(f'#!/bin/bash\n{body}\nexec ffmpeg {options} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def processes_with(*texts: str) -> list[int]:
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


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def decode_errors(path: Path) -> str:
    """Everything FFmpeg complains about while decoding the whole file ('' = clean)."""
    proc = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", f"file:{path}", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    return proc.stderr.strip() + ("" if proc.returncode == 0 else f" (exit {proc.returncode})")


def gray_crop(path: Path, at_s: float, crop: str) -> bytes:
    """One frame's region as 8-bit gray pixels (crop = w:h:x:y in FFmpeg's crop syntax)."""
    return subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-nostdin",
            "-ss",
            str(at_s),
            "-i",
            f"file:{path}",
            "-frames:v",
            "1",
            "-vf",
            f"crop={crop},format=gray",
            "-f",
            "rawvideo",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout


def mean_abs_diff(a: bytes, b: bytes) -> float:
    assert len(a) == len(b) and a
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


FAST_RETRY = {"retry": {"max_retries": 2, "delay_s": 0.1, "jitter": "none"}}


def project_with_broken(tmp_path: Path, rungs: set[str], **spec_changes) -> Project:
    """The default spec whose `rungs` use a preset x264 refuses (an unknown tune): a permanent config error."""
    raw = yaml.safe_load((ROOT / "resources" / "pipelines" / "vod.yaml").read_text())
    for rung in raw["ladder"]:
        if rung["name"] in rungs:
            rung["preset"] = "broken-tune"
    return project_with(
        tmp_path,
        {"ladder": raw["ladder"], "failures": FAST_RETRY, **spec_changes},
        {"broken.yaml": "name: broken-tune\nversion: 1\ntune: no-such-tune\n"},
    )
