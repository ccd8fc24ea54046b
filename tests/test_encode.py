"""The shared encode on real FFmpeg, without Dagster: a long source is encoded in time chunks
that join into whole, frame-exact renditions whose bytes do not depend on how many processes ran
or which outputs were encoded together; a short one in lanes that give the very bytes of one FFmpeg
run per output; and a failing process stops the rest."""

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from mpegflow_dagster import stages
from mpegflow_dagster.media.chunking import WHOLE, Span, boundary_step, plan_spans
from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.media.runner import FFmpegFailed
from mpegflow_dagster.project import Project
from mpegflow_dagster.storage import sha256_file, sha256_files

from pipeline_helpers import ROOT

RUNGS = ("240p", "480p", "720p")
FPS = 30


@pytest.fixture(scope="module")
def ladder_input(make_source, tmp_path_factory):
    """A 4 s 720p30 source with audio, and the shipped spec made to cut it into two chunks."""
    base = tmp_path_factory.mktemp("encode")
    ingest = base / "ingest"
    ingest.mkdir()
    shutil.copyfile(make_source(duration_s=4.0, width=1280, height=720, fps=FPS), ingest / f"{stages.SOURCE_STEM}.mp4")
    shipped = Project.load(ROOT).spec("vod")
    chunked = shipped.model_copy(update={"gop_s": 1.0, "chunk_s": 2.0,
                                         "thumbnails": shipped.thumbnails.model_copy(update={"interval_s": 1.0})})
    whole = chunked.model_copy(update={"chunk_s": 0.0})
    return base, ingest, probe(ingest / f"{stages.SOURCE_STEM}.mp4"), chunked, whole


def scratch(base: Path, name: str) -> Path:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def encode(ladder_input, spec, tag: str, names=RUNGS, thumbnails: bool = True, lanes: int = 2):
    base, ingest, info, _, _ = ladder_input
    work = {n: scratch(base / tag, n) for n in [*names, *(["thumbnails"] if thumbnails else [])]}
    return stages.encode_ladder(ingest, info, spec, [spec.rendition(n) for n in names], thumbnails,
                                stages.Tools(threads=1, lanes=lanes), work)


def frames(path: Path, entries: str) -> list[dict]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", f"frame={entries}",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["frames"]


def test_spans_cut_at_common_keyframe_and_thumbnail_marks_only_when_frame_exact() -> None:
    step = boundary_step(2, 5)
    assert step == 10
    assert plan_spans(60.0, "30", 30, step) == [Span(Fraction(0), Fraction(30)), Span(Fraction(30), None)]
    assert len(plan_spans(600.0, "25", 30, step)) == 20
    assert plan_spans(40.0, "30", 30, step) == [WHOLE]  # shorter than 1.5 chunks
    assert plan_spans(60.0, "30", 0, step) == [WHOLE]  # chunking off
    assert plan_spans(60.0, None, 30, step) == [WHOLE]  # variable frame rate
    assert plan_spans(60.0, "30000/1001", 30, step) == [WHOLE]  # a cut would fall between frames


def test_chunked_renditions_are_whole_frame_exact_and_keyed_in_step(ladder_input):
    _, _, info, chunked, _ = ladder_input
    assert stages.encode_spans(info, chunked) == [Span(Fraction(0), Fraction(2)), Span(Fraction(2), None)]
    done = encode(ladder_input, chunked, "chunked")
    for name in RUNGS:
        runs = [r.argv for r in done[name].runs]
        assert sum("-ss" in argv for argv in runs) == 2 and any("concat" in argv for argv in runs), name
        got = frames(done[name].path, "pts_time,key_frame")
        assert len(got) == 4 * FPS, name  # every source frame once: nothing lost or doubled at the cut
        assert [round(float(f["pts_time"]) * FPS) for f in got] == list(range(4 * FPS)), name
        assert [i for i, f in enumerate(got) if f["key_frame"]] == [0, 30, 60, 90], name  # the cut is a keyframe
        joined = probe(done[name].path)
        assert joined.audio is not None and abs(joined.audio.duration - 4.0) < 0.05, name


def test_chunked_bytes_depend_on_neither_lanes_nor_what_is_encoded_together(ladder_input):
    _, _, _, chunked, whole = ladder_input
    shared = encode(ladder_input, chunked, "two-lanes", lanes=2)
    alone = encode(ladder_input, chunked, "one-lane-720p", names=("720p",), thumbnails=False, lanes=1)
    again = encode(ladder_input, chunked, "again", lanes=1)
    assert sha256_file(shared["720p"].path) == sha256_file(alone["720p"].path) == sha256_file(again["720p"].path)
    for name in RUNGS:
        assert sha256_file(shared[name].path) == sha256_file(again[name].path), name
    # Thumbnails are the same frames either way: chunked, or one run over the whole source.
    unchunked = encode(ladder_input, whole, "whole-thumbs", names=(), thumbnails=True)
    got, want = sha256_files(shared["thumbnails"].path), sha256_files(unchunked["thumbnails"].path)
    assert len(got) == 4 + 2  # 4 JPEGs, the sprite and the storyboard
    assert [(p.relative_to(shared["thumbnails"].path), h) for p, h in got.items()] == \
           [(p.relative_to(unchunked["thumbnails"].path), h) for p, h in want.items()]


def test_unchunked_lanes_give_the_bytes_of_one_run_per_output(ladder_input):
    base, ingest, info, _, whole = ladder_input
    shared = encode(ladder_input, whole, "lanes")
    lane_runs = {id(shared[n].runs[0]) for n in RUNGS}
    assert len(lane_runs) == 2  # two lanes, each decoding the source itself
    for name in RUNGS:
        alone = stages.encode_rendition(ingest, info, whole, whole.rendition(name), stages.Tools(threads=1),
                                        scratch(base / "alone", name))
        assert sha256_file(shared[name].path) == sha256_file(alone.path), name


@pytest.mark.parametrize("which", ["chunked", "whole"])
def test_a_failing_process_stops_the_others_and_is_the_error_raised(ladder_input, which):
    base, ingest, info, chunked, whole = ladder_input
    spec = chunked if which == "chunked" else whole
    work = {n: scratch(base / f"failing-{which}", n) for n in RUNGS}
    work["720p"].rmdir()  # the 720p output cannot be written (whole) or joined (chunked)
    with pytest.raises(FFmpegFailed) as caught:
        stages.encode_ladder(ingest, info, spec, [spec.rendition(n) for n in RUNGS], False,
                             stages.Tools(threads=1, lanes=2), work)
    assert "720p.mp4" in " ".join(caught.value.result.argv)  # the failure itself, not its consequences
    assert not caught.value.result.stopped_by
    assert not list(base.glob("mpegflow-chunks-*")) and not list((base / f"failing-{which}").glob("mpegflow-chunks-*"))
