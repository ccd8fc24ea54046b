"""Package checks over real packages: a small ladder packaged by the project's own `package_hls`
(FFmpeg's hls muxer, mpegts) and `package_cmaf` (Shaka Packager), then damaged on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mpegflow_dagster.media.cmaf import PackagerNotFound, find_packager
from mpegflow_dagster.media.package_qc import (
    alignment_problems,
    check_package,
    references_problems,
    target_duration_problems,
)
from mpegflow_dagster.spec import HlsSpec
from mpegflow_dagster.stages.hls import package_cmaf, package_hls
from mpegflow_dagster.stages.toolkit import Tools

SEGMENT_S = 2
FRAME_S = 1 / 25
# name -> (size, keyframe interval in frames at 25 fps): 2 s GOPs, and one of 3 s
RENDITIONS = {"240p": ("320x240", 50), "360p": ("640x360", 50), "360p_gop3": ("640x360", 75)}


@pytest.fixture(scope="module")
def renditions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """6 s H.264/AAC renditions with keyframes every 50 (75) frames exactly."""
    out = tmp_path_factory.mktemp("renditions")
    made = {}
    for name, (size, gop) in RENDITIONS.items():
        mp4 = out / f"{name}.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y"]
            + ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration=6"]
            + ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=6"]
            + ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
            + ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
            + ["-c:a", "aac", "-b:a", "64k", str(mp4)],
            check=True,
        )
        made[name] = mp4
    return made


def package(renditions: dict[str, Path], names: list[str], kind: str, work: Path) -> Path:
    """The package directory of `names` packaged as `kind` (mpegts or cmaf)."""
    chosen = {n: renditions[n] for n in names}
    cfg = HlsSpec(segment_s=SEGMENT_S, segment_type=kind)
    work.mkdir(parents=True)
    if kind == "cmaf":
        try:
            find_packager()
        except PackagerNotFound as err:
            if os.environ.get("MPEGFLOW_PACKAGER"):
                raise  # named, and not there: a wrong path, not a missing packager
            pytest.skip(f"CMAF needs Shaka Packager: {err}")
        return package_cmaf(chosen, [], cfg, work, {}).path
    return package_hls(chosen, cfg, Tools(), work, {}).path


@pytest.fixture(scope="module", params=["mpegts", "cmaf"])
def good(request, renditions, tmp_path_factory) -> tuple[str, Path]:
    work = tmp_path_factory.mktemp(f"good_{request.param}") / "work"
    return request.param, package(renditions, ["240p", "360p"], request.param, work)


@pytest.fixture
def copy(good, tmp_path) -> tuple[str, Path]:
    """A copy of the good package to damage, in `tmp_path/work/hls` (so `tmp_path` is outside)."""
    kind, path = good
    return kind, Path(shutil.copytree(path, tmp_path / "work" / "hls"))


def segment_names(playlist: Path) -> list[str]:
    return [ln for ln in playlist.read_text().splitlines() if ln and not ln.startswith("#")]


def test_a_good_package_has_no_problems_and_says_what_it_holds(good):
    kind, path = good
    report = check_package(path, segment_s=SEGMENT_S, tolerance_s=FRAME_S)
    assert report.ok, report
    assert report.variants == 2
    assert report.segments["240p/index.m3u8"] == report.segments["360p/index.m3u8"] == 3
    assert json.loads(json.dumps(report.asdict()))["ok"] is True
    if kind == "mpegts":
        assert not report.dash and report.max_segment_s == 2.0
        assert report.files_referenced == 2 * (1 + 3)  # a playlist and its segments a variant
    else:
        # AAC segments end on 1024-sample frames: 94 of them are 2.005 s at 48 kHz
        assert report.dash and report.max_segment_s == pytest.approx(2.005, abs=0.001)
        assert set(report.segments) == {
            f"{a}{n}/index.m3u8" for a in ("", "audio_") for n in RENDITIONS if "gop" not in n
        }
        assert report.files_referenced == 4 * (1 + 1 + 3)  # + init.mp4 of each track


def test_the_muxers_round_the_longest_segment_up_into_the_target_duration(good):
    """FFmpeg per playlist (2.000 s segments: 2); Shaka over the whole package, so the
    2.005 s audio segments make every playlist's 3, the video's too: segment_s + 1 is allowed."""
    kind, path = good
    target = (path / "240p" / "index.m3u8").read_text().split("#EXT-X-TARGETDURATION:")[1]
    assert int(target.split()[0]) == (SEGMENT_S if kind == "mpegts" else SEGMENT_S + 1)
    assert target_duration_problems(path, segment_s=SEGMENT_S) == []
    # a spec asking for 4 s segments did not make this package
    [problem, *_] = target_duration_problems(path, segment_s=4)
    assert "segment_s 4 asks for 4 (or 5" in problem


def test_a_deleted_segment_is_named(copy):
    kind, path = copy
    victim = segment_names(path / "360p" / "index.m3u8")[1]
    (path / "360p" / victim).unlink()
    problems = references_problems(path)
    assert f"360p/index.m3u8: {victim} is missing (360p/{victim})" in problems
    if kind == "cmaf":  # the MPD names the same file
        assert f"manifest.mpd: 360p/{victim} is missing (360p/{victim})" in problems
    assert len(problems) == (1 if kind == "mpegts" else 2)


def test_an_empty_file_is_named(copy):
    """An fMP4 track's init segment (CMAF), a segment (mpegts: no init segment)."""
    kind, path = copy
    name = "init.mp4" if kind == "cmaf" else segment_names(path / "240p" / "index.m3u8")[0]
    (path / "240p" / name).write_bytes(b"")
    assert f"240p/index.m3u8: {name} is empty (240p/{name})" in references_problems(path)


@pytest.mark.parametrize("extra_s, reported", [(0.4, False), (0.6, True)])
def test_an_extinf_longer_than_the_target_duration_rounded_is_reported(copy, extra_s, reported):
    """RFC 8216 4.3.3.1: an EXTINF rounded to the nearest integer is at most the target."""
    kind, path = copy
    playlist = path / "240p" / "index.m3u8"
    text = playlist.read_text()
    target = int(text.split("#EXT-X-TARGETDURATION:")[1].split()[0])
    first = text.index("#EXTINF:")
    end = text.index(",", first)
    playlist.write_text(f"{text[:first]}#EXTINF:{target + extra_s:.3f}{text[end:]}")
    problems = target_duration_problems(path, segment_s=SEGMENT_S)
    if reported:
        name = segment_names(playlist)[0]
        assert problems == [
            f"240p/index.m3u8: segment 0 ({name}) is {target + extra_s:g} s, longer than "
            f"EXT-X-TARGETDURATION:{target}"
        ]
    else:
        assert problems == []


@pytest.mark.parametrize("kind", ["mpegts", "cmaf"])
def test_a_variant_with_other_keyframes_is_misaligned(renditions, tmp_path, kind):
    """3 s GOPs with segment_s 2: its segments cut at 3 and 6 s, the others' at 2, 4, 6 s."""
    path = package(renditions, ["240p", "360p_gop3"], kind, tmp_path / "work")
    problems = alignment_problems(path, tolerance_s=FRAME_S)
    expected = [
        "360p_gop3/index.m3u8: 2 segments, 240p/index.m3u8 has 3",
        "360p_gop3/index.m3u8: segment 1 starts at 3.000 s, 240p/index.m3u8's at 2.000 s "
        "(tolerance 0.04 s)",
    ]
    assert problems[:2] == expected
    if kind == "cmaf":  # the MPD's video Representations say the same; its audio is not compared
        assert len(problems) == 4 and all(p.startswith("manifest.mpd: ") for p in problems[2:])
        assert "360p_gop3/$Number%05d$.m4s" in problems[2]
    else:
        assert len(problems) == 2
    # 3 s segments still fit segment_s + 1: only the alignment check sees this
    assert target_duration_problems(path, segment_s=SEGMENT_S) == []


@pytest.mark.parametrize(
    "playlist, uri, problem",
    [
        ("240p/index.m3u8", "../../escape.ts", "points outside the package"),
        ("master.m3u8", "../escape.ts", "points outside the package"),
        ("240p/index.m3u8", "{outside}/escape.ts", "is not a relative path inside the package"),
        ("240p/index.m3u8", "https://cdn.example/escape.ts", "is not a relative path inside"),
    ],
)
def test_a_uri_leaving_the_package_is_reported_even_if_the_file_is_there(
    copy, tmp_path, playlist, uri, problem
):
    """`tmp_path/work/escape.ts` and `tmp_path/escape.ts` exist: outside the package all the same.
    (From a variant's folder `../escape.ts` is the package's own top folder: inside.)"""
    _, path = copy
    (tmp_path / "escape.ts").write_bytes(b"G" * 188)
    (tmp_path / "work" / "escape.ts").write_bytes(b"G" * 188)
    uri = uri.format(outside=tmp_path)
    target = path / playlist
    first = "240p/index.m3u8" if playlist == "master.m3u8" else segment_names(target)[0]
    target.write_text(target.read_text().replace(f"\n{first}\n", f"\n{uri}\n"))
    assert f"{playlist}: {uri} {problem}" in " | ".join(references_problems(path))


def test_a_package_without_a_master_playlist_says_so(tmp_path):
    report = check_package(tmp_path, segment_s=SEGMENT_S, tolerance_s=FRAME_S)
    assert report.references_problems == ["master.m3u8 is missing"] and not report.ok
