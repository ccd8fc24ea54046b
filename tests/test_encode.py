"""The shared encode on real FFmpeg, without Dagster: a long source is encoded in time chunks
that join into whole, frame-exact renditions whose bytes do not depend on how many processes ran
or which outputs were encoded together; a short one in lanes that give the very bytes of one FFmpeg
run per output; and a failing process stops the rest."""

import json
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
from pipeline_helpers import ROOT, ffmpeg_wrapper

from mpegflow_dagster.media.chunking import WHOLE, Span, boundary_step, marks_before, plan_spans
from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.media.runner import FFmpegFailed
from mpegflow_dagster.project import Project
from mpegflow_dagster.stages.encode import encode_ladder, encode_rendition, encode_spans
from mpegflow_dagster.stages.ingest import SOURCE_STEM
from mpegflow_dagster.stages.toolkit import Tools
from mpegflow_dagster.storage import CHUNK_CACHE, describe, sha256_file, sha256_files

RUNGS = ("240p", "480p", "720p")
# 30000/1001: the 2 s cut falls between frames (on frame 60, 2.002 s). 61/3: the cut is on frame
# 41, at 2.0163934... s, a time FFmpeg's -ss rounds; the 3 s keyframe and thumbnail are frame 61,
# where 1 s counted from the cut would put them on 62.
RATES = ("30", "30000/1001", "61/3")


def ladder_source(make_source, tmp_path_factory, fps: str):
    """A 4 s 720p source with audio, and the shipped spec made to cut it into two chunks."""
    base = tmp_path_factory.mktemp("encode")
    ingest = base / "ingest"
    ingest.mkdir()
    shutil.copyfile(
        make_source(duration_s=4.0, width=1280, height=720, fps=fps), ingest / f"{SOURCE_STEM}.mp4"
    )
    shipped = Project.load(ROOT).spec("vod")
    chunked = shipped.model_copy(
        update={
            "gop_s": 1.0,
            "chunk_s": 2.0,
            "chunk_lead_gops": 1,  # the second chunk's encode starts 1 s before its cut
            "thumbnails": shipped.thumbnails.model_copy(update={"interval_s": 1.0}),
        }
    )
    whole = chunked.model_copy(update={"chunk_s": 0.0})
    return base, ingest, probe(ingest / f"{SOURCE_STEM}.mp4"), chunked, whole


@pytest.fixture(scope="module")
def ladder_input(make_source, tmp_path_factory):
    return ladder_source(make_source, tmp_path_factory, "30")


@pytest.fixture(scope="module", params=RATES)
def any_rate_input(request, make_source, tmp_path_factory):
    return ladder_source(make_source, tmp_path_factory, request.param)


def scratch(base: Path, name: str) -> Path:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def encode(ladder_input, spec, tag: str, names=RUNGS, thumbnails: bool = True, lanes: int = 2):
    base, ingest, info, _, _ = ladder_input
    work = {n: scratch(base / tag, n) for n in [*names, *(["thumbnails"] if thumbnails else [])]}
    return encode_ladder(
        ingest,
        info,
        spec,
        [spec.rendition(n) for n in names],
        thumbnails,
        Tools(threads=1, lanes=lanes),
        work,
    )


def frames(path: Path, entries: str) -> list[dict]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            f"frame={entries}",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["frames"]


def test_spans_cut_on_the_first_frame_at_or_after_common_keyframe_and_thumbnail_marks() -> None:
    step = boundary_step(2, 5)
    assert step == 10
    assert plan_spans(60.0, "30", 30, step) == [
        Span(Fraction(0), Fraction(30)),
        Span(Fraction(30), None),
    ]
    assert len(plan_spans(600.0, "25", 30, step)) == 20
    assert plan_spans(40.0, "30", 30, step) == [WHOLE]  # shorter than 1.5 chunks
    assert plan_spans(60.0, "30", 0, step) == [WHOLE]  # chunking off
    assert plan_spans(60.0, None, 30, step) == [WHOLE]  # variable frame rate
    # the 30 s mark falls between frames 899 and 900 (29.97 s and 30.03 s): the cut is on 900
    ntsc = plan_spans(60.06, "30000/1001", 30, step)
    assert ntsc == [
        Span(Fraction(0), Fraction(900 * 1001, 30000)),
        Span(Fraction(900 * 1001, 30000), None),
    ]
    assert marks_before(ntsc[1], 10) == 3 and marks_before(ntsc[1], 2) == 15
    film = plan_spans(
        1800.0, "24000/1001", 30, step
    )  # 60 chunks, each on the first frame after its mark
    film_rate = Fraction(24000, 1001)
    assert len(film) == 60 and all(
        s.start_s * film_rate == math.ceil(k * 30 * film_rate) for k, s in enumerate(film)
    )


@pytest.mark.slow  # three-rung ladders of a 4 s 720p source: 2-9 s a case
def test_chunked_renditions_are_whole_frame_exact_and_keyed_in_step(any_rate_input):
    _, ingest, info, chunked, _ = any_rate_input
    rate = Fraction(info.video.constant_frame_rate)
    cut = Fraction(math.ceil(2 * rate)) / rate  # the first frame at or after 2 s
    # the second chunk's encode starts on the first frame at or after 1 s before its cut
    lead = cut - Fraction(math.ceil((cut - 1) * rate)) / rate
    assert encode_spans(info, chunked) == [Span(Fraction(0), cut), Span(cut, None, lead)]
    source_frames = len(frames(ingest / f"{SOURCE_STEM}.mp4", "pts_time"))
    # keyframes where one run over the whole source forces them: the first frame at or after each second
    keyframes = [math.ceil(k * rate) for k in range(4) if k * rate < source_frames]
    done = encode(any_rate_input, chunked, "chunked")
    for name in RUNGS:
        runs = [r.argv for r in done[name].runs]
        assert sum("-ss" in argv for argv in runs) == 2 and any(
            "concat" in argv for argv in runs
        ), name
        got = frames(done[name].path, "pts_time,key_frame")
        # every source frame once, evenly timed: nothing lost or doubled at the cut
        assert [round(float(f["pts_time"]) * rate) for f in got] == list(range(source_frames)), name
        assert [i for i, f in enumerate(got) if f["key_frame"]] == keyframes, (
            name
        )  # the cut is one of them
        joined = probe(done[name].path)
        assert joined.audio is not None and abs(joined.audio.duration - 4.0) < 0.05, name


@pytest.mark.slow  # three-rung ladders of a 4 s 720p source: 2-9 s a case
def test_chunked_bytes_depend_on_neither_lanes_nor_what_is_encoded_together(any_rate_input):
    _, _, _, chunked, whole = any_rate_input
    shared = encode(any_rate_input, chunked, "two-lanes", lanes=2)
    alone = encode(
        any_rate_input, chunked, "one-lane-720p", names=("720p",), thumbnails=False, lanes=1
    )
    again = encode(any_rate_input, chunked, "again", lanes=1)
    assert (
        sha256_file(shared["720p"].path)
        == sha256_file(alone["720p"].path)
        == sha256_file(again["720p"].path)
    )
    for name in RUNGS:
        assert sha256_file(shared[name].path) == sha256_file(again[name].path), name
    # Thumbnails are the same frames either way: chunked, or one run over the whole source.
    unchunked = encode(any_rate_input, whole, "whole-thumbs", names=(), thumbnails=True)
    got, want = sha256_files(shared["thumbnails"].path), sha256_files(unchunked["thumbnails"].path)
    assert len(got) == 4 + 2  # 4 JPEGs, the sprite and the storyboard
    assert [(p.relative_to(shared["thumbnails"].path), h) for p, h in got.items()] == [
        (p.relative_to(unchunked["thumbnails"].path), h) for p, h in want.items()
    ]


@pytest.mark.slow  # three-rung ladders of a 4 s 720p source: 2-9 s a case
def test_unchunked_lanes_give_the_bytes_of_one_run_per_output(ladder_input):
    base, ingest, info, _, whole = ladder_input
    shared = encode(ladder_input, whole, "lanes")
    lane_runs = {id(shared[n].runs[0]) for n in RUNGS}
    assert len(lane_runs) == 2  # two lanes, each decoding the source itself
    for name in RUNGS:
        alone = encode_rendition(
            ingest,
            info,
            whole,
            whole.rendition(name),
            Tools(threads=1),
            scratch(base / "alone", name),
        )
        assert sha256_file(shared[name].path) == sha256_file(alone.path), name


@pytest.mark.slow  # three-rung ladders of a 4 s 720p source: 2-9 s a case
@pytest.mark.parametrize("which", ["chunked", "whole"])
def test_a_failing_process_stops_the_others_and_is_the_error_raised(ladder_input, which):
    base, ingest, info, chunked, whole = ladder_input
    spec = chunked if which == "chunked" else whole
    work = {n: scratch(base / f"failing-{which}", n) for n in RUNGS}
    work["720p"].rmdir()  # the 720p output cannot be written (whole) or joined (chunked)
    with pytest.raises(FFmpegFailed) as caught:
        encode_ladder(
            ingest,
            info,
            spec,
            [spec.rendition(n) for n in RUNGS],
            False,
            Tools(threads=1, lanes=2),
            work,
        )
    assert "720p.mp4" in " ".join(
        caught.value.result.argv
    )  # the failure itself, not its consequences
    assert not caught.value.result.stopped_by
    assert not list(base.glob("mpegflow-chunks-*")) and not list(
        (base / f"failing-{which}").glob("mpegflow-chunks-*")
    )


@pytest.mark.slow  # a chunked ladder of a 4 s 720p source, encoded about twice
def test_a_retry_encodes_only_the_chunks_that_did_not_finish(ladder_input, tmp_path):
    """The second chunk's FFmpeg is SIGKILLed (as the OOM killer would) after the first chunk
    finished: the retry takes the first chunk as it was and encodes the second alone, and the
    outputs are byte for byte those of an encode that never failed."""
    base, ingest, info, chunked, _ = ladder_input
    calls, killed = tmp_path / "chunk-runs", tmp_path / "killed-once"
    # Chunk runs are the encodes with -ss (preview pictures seek too, but encode nothing).
    wrapper = ffmpeg_wrapper(
        tmp_path,
        f"""
[[ "$*" == *libx264* ]] || exec ffmpeg "$@"
if [[ "$*" == *" -ss "* ]]; then echo "$*" | grep -o -- " -ss [0-9.]* " >> {calls}; fi
if [[ "$*" == *" -ss 1 "* && ! -e {killed} ]]; then
  touch {killed}; ffmpeg "$@" & sleep 0.3; kill -9 $!; wait $!; kill -9 $$
fi""",
    )

    def attempt() -> dict:
        work = {n: scratch(base / "retried", n) for n in [*RUNGS, "thumbnails"]}
        rungs = [chunked.rendition(n) for n in RUNGS]
        # one lane: the chunks run one after the other, so the first is done when the second dies
        return encode_ladder(
            ingest, info, chunked, rungs, True, Tools(ffmpeg=str(wrapper), lanes=1), work
        )

    with pytest.raises(FFmpegFailed) as caught:
        attempt()
    assert caught.value.result.signal == 9
    outs = attempt()
    assert sorted(calls.read_text().split("\n")) == ["", " -ss 0 ", " -ss 1 ", " -ss 1 "]
    reference = encode(ladder_input, chunked, "never-failed", lanes=1)
    for name, out in outs.items():
        assert describe(out.path)[0] == describe(reference[name].path)[0], name
    starts = [r.argv[r.argv.index("-ss") + 1] for r in outs["240p"].runs if "-ss" in r.argv]
    assert starts == ["0", "1"]  # provenance lists both chunk runs, the one reused too
    assert not list((base / "retried" / CHUNK_CACHE).iterdir())  # done: nothing kept
