"""Source QC and two-pass loudness normalization on real FFmpeg runs of small lavfi clips."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mpegflow_dagster.media.commands import (
    AudioOutput,
    LoudnormTarget,
    VideoOutput,
    audio_args,
    encode_ladder_args,
)
from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.media.runner import run_ffmpeg
from mpegflow_dagster.media.source_qc import (
    SourceQcError,
    loudnorm_for,
    run_source_qc,
    source_qc_args,
)
from mpegflow_dagster.media.synth import x264_rung

SIZE = "320x240"
FPS = 25
FRAME_S = 1 / FPS


def _make(out: Path, *args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args, str(out)], check=True
    )
    return out


def _x264(*extra: str) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qc_clips")
    pattern = f"testsrc2=s={SIZE}:r={FPS}:d=5"
    tone = "sine=f=440:r=48000:d=5"
    made = {}
    # black 5-10 s and silence 5-10 s in the middle of 15 s
    made["gaps"] = _make(
        d / "gaps.mp4",
        *("-f", "lavfi", "-i", pattern, "-f", "lavfi", "-i", f"color=black:s={SIZE}:r={FPS}:d=5"),
        *("-f", "lavfi", "-i", pattern, "-f", "lavfi", "-i", tone),
        *("-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono:d=5", "-f", "lavfi", "-i", tone),
        *("-filter_complex", "[0:v][3:a][1:v][4:a][2:v][5:a]concat=n=3:v=1:a=1[v][a]"),
        *("-map", "[v]", "-map", "[a]", *_x264(), "-c:a", "aac"),
    )
    made["clean"] = _make(
        d / "clean.mp4",
        *("-f", "lavfi", "-i", f"testsrc2=s={SIZE}:r={FPS}:d=12"),
        *("-f", "lavfi", "-i", "sine=f=440:r=48000:d=12", *_x264(), "-c:a", "aac"),
    )
    # the frame at 4.0 s held until 8.0 s, then the pattern again; lossless, as x264's lossy
    # P-frames go on refining a still picture for a few frames (freeze found 2-4 frames late)
    made["frozen"] = _make(
        d / "frozen.mp4",
        *("-f", "lavfi", "-i", f"testsrc2=s={SIZE}:r={FPS}:d=4.04"),
        *("-f", "lavfi", "-i", f"testsrc2=s={SIZE}:r={FPS}:d=4"),
        *("-filter_complex", "[0:v]tpad=stop_mode=clone:stop_duration=3.96[s];[s][1:v]concat[v]"),
        *("-map", "[v]", *_x264("-qp", "0")),
    )
    # pink noise at about -13 LUFS (10 LU above the target)
    made["loud"] = _make(
        d / "loud.mp4",
        *("-f", "lavfi", "-i", "anoisesrc=c=pink:r=48000:a=0.85:d=12:seed=7"),
        *("-af", "pan=stereo|c0=c0|c1=c0", "-c:a", "aac", "-b:a", "192k"),
    )
    made["interlaced"] = _make(
        d / "interlaced.mp4",
        *("-f", "lavfi", "-i", f"testsrc2=s={SIZE}:r=50:d=12"),
        *("-vf", "interlace=scan=tff,setfield=tff", "-flags", "+ilme+ildct"),
        *_x264("-x264opts", "tff=1"),
    )
    return made


def _qc(src: Path, out_dir: Path, **kwargs):
    return run_source_qc(src, out_dir, probe(src), **kwargs)[0]


def test_black_and_silence_flagged_with_their_intervals(clips, tmp_path):
    # a directory name FFmpeg's filter arguments would trip over unescaped
    report = _qc(clips["gaps"], tmp_path / "we:ird, [dir]'s;x")
    assert len(report.black) == 1 and len(report.silence) == 1
    assert report.black[0].start_s == pytest.approx(5.0, abs=FRAME_S)
    assert report.black[0].end_s == pytest.approx(10.0, abs=FRAME_S)
    assert report.silence[0].start_s == pytest.approx(5.0, abs=0.1)
    assert report.silence[0].end_s == pytest.approx(10.0, abs=0.1)
    # a black picture is also a still one
    assert [(round(i.start_s, 2), round(i.end_s, 2)) for i in report.freeze] == [(5.0, 10.0)]
    assert report.frames_analysed == 15 * FPS
    assert report.interlace is not None and not report.interlace.interlaced


def test_clean_source_flags_nothing(clips, tmp_path):
    report = _qc(clips["clean"], tmp_path)
    assert (report.black, report.freeze, report.silence) == ([], [], [])
    assert report.loudness is not None and report.interlace is not None
    assert report.interlace.field_order == "progressive"  # testsrc2 fools idet both ways
    assert report.frames_analysed == 12 * FPS


def test_frozen_stretch(clips, tmp_path):
    report = _qc(clips["frozen"], tmp_path)
    assert len(report.freeze) == 1
    assert report.freeze[0].start_s == pytest.approx(4.0, abs=FRAME_S)
    assert report.freeze[0].end_s == pytest.approx(8.0, abs=FRAME_S)
    assert report.black == [] and report.silence == [] and report.loudness is None


def test_stretches_open_at_the_end_close_at_the_duration(tmp_path):
    src = _make(
        tmp_path / "ends_black.mp4",
        *("-f", "lavfi", "-i", f"testsrc2=s={SIZE}:r={FPS}:d=3"),
        *("-f", "lavfi", "-i", f"color=black:s={SIZE}:r={FPS}:d=3"),
        *("-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", *_x264()),
    )
    report = _qc(src, tmp_path / "qc")
    assert [(i.start_s, i.end_s) for i in report.black] == [(3.0, 6.0)]
    assert [(i.start_s, i.end_s) for i in report.freeze] == [(3.0, 6.0)]


def _ebur128_integrated(src: Path) -> float:
    log = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-i", str(src), "-map", "0:a:0"]
        + ["-af", "ebur128", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    summary = log[log.rindex("Summary:") :]
    return float(summary.split("I:")[1].split("LUFS")[0])


def test_loudness_and_two_pass_normalization(clips, tmp_path):
    target = LoudnormTarget()  # -23 LUFS, -1 dBTP, 7 LU
    report = _qc(clips["loud"], tmp_path / "qc", loudnorm=target)
    assert report.loudness is not None and report.loudnorm is not None
    assert report.loudness.integrated_lufs == pytest.approx(-13.0, abs=1.0)
    assert report.loudness.integrated_lufs == pytest.approx(
        _ebur128_integrated(clips["loud"]), abs=0.5
    )
    assert report.loudnorm.input_i == pytest.approx(report.loudness.integrated_lufs, abs=0.5)
    assert report.loudness.true_peak_dbtp < 0 and report.interlace is None

    norm = loudnorm_for(report, target)
    assert norm is not None
    out = tmp_path / "normalized.m4a"
    args = audio_args(clips["loud"], {out: AudioOutput(128, 48000, 2, loudnorm=norm)})
    assert any("loudnorm=" in a and "linear=true" in a for a in args)
    run_ffmpeg(args)
    assert probe(out).audio.sample_rate == 48000  # not loudnorm's 192 kHz
    after = _qc(out, tmp_path / "qc_after")
    assert after.loudness is not None
    assert after.loudness.integrated_lufs == pytest.approx(-23.0, abs=1.0)
    assert after.loudness.true_peak_dbtp <= -1.0 + 0.5


def test_no_measurement_no_loudnorm(clips, tmp_path):
    report = _qc(clips["clean"], tmp_path)
    assert report.loudnorm is None and loudnorm_for(report, LoudnormTarget()) is None


def test_interlaced_tff_detected(clips, tmp_path):
    report = _qc(clips["interlaced"], tmp_path)
    assert report.interlace is not None
    assert report.interlace.interlaced and report.interlace.field_order == "tff"
    assert report.loudness is None and report.silence == []


def test_reproducible(clips, tmp_path):
    first = _qc(clips["gaps"], tmp_path / "a")
    second = _qc(clips["gaps"], tmp_path / "b")
    assert first.model_dump_json() == second.model_dump_json()


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(SourceQcError, match="does not exist"):
        source_qc_args(tmp_path / "nope.mp4", tmp_path, video=True, audio_stream="a:0")


def test_nothing_to_analyse_is_an_error(tmp_path):
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n", encoding="utf-8")
    only_subtitles = _make(tmp_path / "subs.mkv", "-i", str(srt), "-c:s", "srt")
    info = probe(only_subtitles)
    assert info.video is None and info.audio is None
    with pytest.raises(SourceQcError, match="no video and no audio"):
        run_source_qc(only_subtitles, tmp_path / "qc", info)
    with pytest.raises(SourceQcError, match="no video and no audio"):
        source_qc_args(only_subtitles, tmp_path, video=False, audio_stream=None)


def _rung(height: int, kbps: int, loudnorm=None) -> VideoOutput:
    return x264_rung(
        height, kbps, audio_bitrate_kbps=96, speed="ultrafast", frame_rate=25.0, loudnorm=loudnorm
    )


def test_ladder_shares_one_loudnorm(clips, tmp_path):
    """Renditions of the same audio with the same loudnorm: one loudnorm, split with asplit;
    without loudnorm the argv is what it always was (no audio filter at all)."""
    target = LoudnormTarget()
    norm = loudnorm_for(_qc(clips["clean"], tmp_path / "qc", loudnorm=target), target)
    assert norm is not None
    outs = {
        tmp_path / "240.mp4": _rung(240, 400, norm),
        tmp_path / "180.mp4": _rung(180, 250, norm),
    }
    args = encode_ladder_args(clips["clean"], outs, threads=1)
    graph = args[args.index("-filter_complex") + 1]
    assert graph.count("loudnorm=") == 1 and "asplit=2" in graph and "aresample=48000" in graph
    run_ffmpeg(args)
    for out in outs:
        assert probe(out).audio.sample_rate == 48000
    plain = {p: _rung(r.height, r.video_bitrate_kbps) for p, r in outs.items()}
    graph = encode_ladder_args(clips["clean"], plain, threads=1)
    assert not any("loudnorm" in a or "asplit" in a for a in graph)
