"""Per-rendition quality checks on real FFmpeg: PSNR, SSIM and VMAF of several renditions in one
run, decode damage, and keyframes at the forced times. Small clips made once per module."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import ffmpeg
import pytest

from mpegflow_dagster.media import quality
from mpegflow_dagster.media.commands import VideoOutput, encode_rendition_args
from mpegflow_dagster.media.quality import (
    Compared,
    QualityError,
    Scores,
    compare,
    decode_args,
    decode_errors,
    expected_frames,
    frame_count,
    frame_problems,
    keyframe_problems,
    keyframe_times,
    metrics_binary,
)
from mpegflow_dagster.media.runner import run_ffmpeg
from mpegflow_dagster.media.synth import make_clip, x264_rung

FPS, SECONDS = 25, 4.0
FRAMES = int(FPS * SECONDS)


def rung(height: int, kbps: int, gop_s: float = 2.0) -> VideoOutput:
    return x264_rung(
        height, kbps, audio_bitrate_kbps=64, gop_s=gop_s, frame_rate=FPS, has_audio=False
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 640x360 testsrc2 source (moving, detailed; make_clip's `noisy` grain is so heavy that
    1.5 Mb/s cannot carry it either) with two audio streams, its renditions as the pipeline encodes
    them (well fed, starved, smaller), and an untouched copy."""
    base = tmp_path_factory.mktemp("quality")
    source = make_clip(
        base / "source.mp4",
        duration_s=SECONDS,
        width=640,
        height=360,
        fps=FPS,
        languages=("en", "fr"),
    )
    files = {"source": source}
    for name, enc in {
        "fed": rung(360, 1500),
        "starved": rung(360, 60),
        "small": rung(180, 400),
    }.items():
        files[name] = base / f"{name}.mp4"
        run_ffmpeg(encode_rendition_args(source, files[name], enc, threads=1))
    files["copy"] = base / "copy.mp4"
    shutil.copyfile(source, files["copy"])
    return files


def renditions(clips, *names: str) -> list[Compared]:
    sizes = {"small": (320, 180)}
    return [Compared(n, clips[n], *sizes.get(n, (640, 360))) for n in names]


@pytest.fixture(scope="module")
def vmaf_binary():
    binary = metrics_binary("imageio-ffmpeg")
    assert binary.vmaf
    return binary


@pytest.fixture(scope="module")
def joint(clips, vmaf_binary, tmp_path_factory):
    """One run over four renditions with VMAF: the source decoded once."""
    out = tmp_path_factory.mktemp("joint")
    compared = renditions(clips, "copy", "fed", "starved", "small")
    scores, result = compare(clips["source"], compared, out, vmaf_binary, every=10)
    return compared, scores, result


def test_binaries_say_what_they_can(vmaf_binary):
    debian = metrics_binary("ffmpeg")
    assert not debian.vmaf and debian.version.startswith("ffmpeg version 5.")
    assert vmaf_binary.version.startswith("ffmpeg version")
    assert metrics_binary(vmaf_binary.path) is vmaf_binary  # cached per path
    with pytest.raises(QualityError, match="no libvmaf"):
        compare(Path("x"), [], Path("."), debian, vmaf=True)


def test_an_untouched_copy_scores_as_identical(joint):
    _, scores, _ = joint
    same = scores["copy"]
    assert same.frames == FRAMES // 10
    assert same.psnr_y == same.psnr_avg == same.psnr_min == math.inf
    assert same.ssim == same.ssim_min == 1.0
    assert same.vmaf_mean is not None and same.vmaf_mean >= 99
    # inf survives JSON (as "Infinity") and reads back
    assert Scores.model_validate_json(same.model_dump_json()) == same
    assert '"psnr_y":"Infinity"' in same.model_dump_json()


def test_a_starved_rendition_scores_clearly_lower_in_the_same_run(joint):
    compared, scores, results = joint
    (result,) = results  # whole files: one run
    assert [a for a in result.argv if a == "-i"].count("-i") == 1 + len(compared)
    fed, starved, small = scores["fed"], scores["starved"], scores["small"]
    for s in (fed, starved, small):
        assert s.frames == FRAMES // 10 and s.vmaf_mean is not None
    assert fed.psnr_y > starved.psnr_y + 10
    assert fed.ssim > starved.ssim + 0.05
    assert fed.vmaf_mean is not None and starved.vmaf_mean is not None
    assert fed.vmaf_mean > 95 and fed.vmaf_mean > starved.vmaf_mean + 30
    assert starved.vmaf_min is not None and starved.vmaf_min <= starved.vmaf_mean
    assert decode_errors(result.messages) == []


def test_scores_are_reproducible(joint, clips, vmaf_binary, tmp_path):
    compared, scores, _ = joint
    again, _ = compare(clips["source"], compared, tmp_path, vmaf_binary, every=10)
    assert again == scores


def test_every_sets_how_many_frames_are_compared(clips, tmp_path):
    debian = metrics_binary("ffmpeg")
    source_frames = frame_count(clips["source"])
    assert source_frames == FRAMES
    short = tmp_path / "short.mp4"  # a rendition that lost its second half
    run_ffmpeg(["-i", str(clips["fed"]), "-t", "2", "-c", "copy", str(short)])
    compared = [*renditions(clips, "fed"), Compared("short", short, 640, 360)]
    for every in (1, 10):
        scores, _ = compare(clips["source"], compared, tmp_path / str(every), debian, every=every)
        assert (
            scores["fed"].frames
            == expected_frames(source_frames, every)
            == math.ceil(FRAMES / every)
        )
        assert scores["fed"].vmaf_mean is None
        assert frame_problems(scores, source_frames=source_frames, every=every) == [
            f"short: {scores['short'].frames} frames compared, {expected_frames(source_frames, every)}"
            f" expected ({source_frames} / {every})"
        ]
        assert scores["short"].frames == expected_frames(frame_count(short), every)


def test_sampled_gops_pair_the_same_frames_and_score_like_the_whole_files(joint, clips, tmp_path):
    """One GOP in N: each run seeks every input to a GOP of the renditions; an untouched copy
    still scores as identical there (a pairing off by one frame would not), and a rendition
    scores close to its whole-file score on the frames of that GOP alone."""
    debian = metrics_binary("ffmpeg")
    packets = quality.video_packets(clips["fed"])
    assert len(packets) == FRAMES
    # two 2 s GOPs: one in five is still one, the centred one; every GOP is both
    (window,) = quality.sample_windows(packets, 5, 1 / FPS)
    assert (window.start_s, window.frames) == (2.0, 2 * FPS - 1)
    assert [w.start_s for w in quality.sample_windows(packets, 1, 1 / FPS)] == [0.0, 2.0]
    compared = renditions(clips, "copy", "fed", "starved")
    scores, runs = compare(clips["source"], compared, tmp_path, debian, every=1, windows=[window])
    assert len(runs) == 1 and all(s.frames == window.frames for s in scores.values())
    assert scores["copy"].psnr_avg == math.inf and scores["copy"].ssim == 1.0
    whole = joint[1]
    for name in ("fed", "starved"):
        assert abs(scores[name].psnr_avg - whole[name].psnr_avg) < 1.5, name
    assert scores["fed"].psnr_avg > scores["starved"].psnr_avg + 10
    assert quality.sample_windows([(0.0, True), (0.04, True)], 5, 1 / FPS) == []  # all intra
    with pytest.raises(ValueError, match="every_nth_gop"):
        quality.sample_windows(packets, 0, 1 / FPS)


def test_keyframes_are_at_the_forced_times(clips, tmp_path):
    times = keyframe_times(clips["fed"])
    assert times == [0.0, 2.0]
    assert keyframe_problems(times, every_s=2, duration_s=SECONDS, tolerance_s=1 / FPS) == []
    long_gop = tmp_path / "gop5.mp4"
    run_ffmpeg(
        ["-i", str(clips["source"]), "-an", "-c:v", "libx264", "-preset", "ultrafast"]
        + ["-g", str(5 * FPS), str(long_gop)]
    )
    assert keyframe_times(long_gop) == [0.0]
    assert keyframe_problems(
        keyframe_times(long_gop), every_s=2, duration_s=SECONDS, tolerance_s=1 / FPS
    ) == ["no keyframe at 2 s (within 0.04 s)"]


def test_extra_keyframes_are_problems_unless_allowed():
    times = [0.0, 1.0, 2.04]
    kwargs = dict(every_s=2.0, duration_s=4.0, tolerance_s=0.04)
    assert keyframe_problems(times, **kwargs) == ["keyframe at 1 s is at no mark"]
    assert keyframe_problems(times, **kwargs, extra_allowed=True) == []
    # a mark at the very end is not expected: no frame is there
    assert keyframe_problems([0.0, 2.0], every_s=2.0, duration_s=4.0, tolerance_s=0.04) == []


def damage(mp4: Path, out: Path) -> Path:
    """A copy with 16 KiB in the middle of its mdat box overwritten."""
    data = bytearray(mp4.read_bytes())
    at = 0
    while at < len(data):  # top-level boxes: 32-bit size, type
        size, kind = int.from_bytes(data[at : at + 4], "big"), bytes(data[at + 4 : at + 8])
        if kind == b"mdat":
            middle = at + size // 2
            data[middle : middle + 16384] = bytes((i * 7919) % 251 for i in range(16384))
            out.write_bytes(data)
            return out
        at += size
    raise AssertionError("no mdat")


def test_decode_damage_shows_in_a_decode_of_that_file(clips, tmp_path):
    damaged = damage(clips["fed"], tmp_path / "damaged.mp4")
    errors = decode_errors(run_ffmpeg(decode_args(damaged)).messages)
    assert errors, "the damaged rendition decoded clean"
    assert decode_errors(run_ffmpeg(decode_args(clips["fed"])).messages) == []
    # the joint run shows it too (it cannot say which input it came from)
    _, (result,) = compare(
        clips["source"],
        [Compared("damaged", damaged, 640, 360)],
        tmp_path / "joint",
        metrics_binary("ffmpeg"),
    )
    assert decode_errors(result.messages)


def test_bad_inputs_raise_clear_errors(clips, tmp_path):
    debian = metrics_binary("ffmpeg")
    with pytest.raises(QualityError, match="no such file"):
        compare(
            clips["source"], [Compared("x", tmp_path / "missing.mp4", 64, 64)], tmp_path, debian
        )
    with pytest.raises(QualityError, match="no such file"):
        keyframe_times(tmp_path / "missing.mp4")
    with pytest.raises(QualityError, match="not the size it was given as"):
        compare(clips["source"], [Compared("fed", clips["fed"], 320, 180)], tmp_path, debian)
    audio_only = tmp_path / "audio.mp4"
    run_ffmpeg(
        ffmpeg.output(
            ffmpeg.input("sine=duration=1", f="lavfi"), str(audio_only), **{"c:a": "aac"}
        ).get_args()
    )
    with pytest.raises(QualityError, match="no video stream"):
        compare(clips["source"], [Compared("a", audio_only, 64, 64)], tmp_path, debian)
    with pytest.raises(QualityError, match="no video stream"):
        keyframe_times(audio_only)
    with pytest.raises(QualityError, match="no video stream"):
        frame_count(audio_only)
    with pytest.raises(QualityError, match="not installed"):
        import sys

        saved = sys.modules.get("imageio_ffmpeg")
        sys.modules["imageio_ffmpeg"] = None  # type: ignore[assignment]
        try:
            quality.metrics_binary("imageio-ffmpeg")
        finally:
            if saved is not None:
                sys.modules["imageio_ffmpeg"] = saved
            else:
                del sys.modules["imageio_ffmpeg"]
