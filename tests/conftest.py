"""Shared fixtures: real FFmpeg clips generated with lavfi, cached for the session."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from mpegflow_dagster.media.synth import make_clip, write_srt

ClipFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def clip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def make_source(clip_cache: Path) -> ClipFactory:
    """make_source(name, duration_s=, width=, height=, fps=, audio=, captions=, languages=,
    default_language=) -> a fresh copy of a cached clip.

    Each call returns a new file in its own directory (tests may rename or damage it); encoding
    happens once per distinct parameter set."""
    counter = {"n": 0}

    def factory(
        name: str = "clip",
        *,
        duration_s: float = 4.0,
        width: int = 640,
        height: int = 360,
        fps: int | str = 25,
        audio: bool = True,
        captions: bool = False,
        languages: tuple[str, ...] = (),
        default_language: str | None = None,
    ) -> Path:
        rate = str(fps).replace("/", "over")
        tagged = "".join(f"_{lang}" for lang in languages)
        if default_language:
            tagged += f"_default-{default_language}"
        cached = clip_cache / f"{duration_s:g}s_{width}x{height}_{rate}_{int(audio)}{tagged}.mp4"
        if not cached.exists():
            make_clip(
                cached,
                duration_s=duration_s,
                width=width,
                height=height,
                fps=fps,
                audio=audio,
                languages=languages,
                default_language=default_language,
            )
        counter["n"] += 1
        directory = clip_cache / "copies" / str(counter["n"])
        directory.mkdir(parents=True)
        out = directory / f"{name}.mp4"
        shutil.copyfile(cached, out)
        if captions:
            write_srt(out.with_suffix(".srt"), duration_s, every_s=1.0)
        return out

    return factory
