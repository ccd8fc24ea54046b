"""The shared encode on real FFmpeg, without Dagster: one decoder feeding encoder lanes through
named pipes gives the very bytes of one FFmpeg run per output, and a failing lane stops the rest."""

import shutil
from pathlib import Path

import pytest

from mpegflow_dagster import stages
from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.media.runner import FFmpegFailed
from mpegflow_dagster.project import Project
from mpegflow_dagster.storage import sha256_file, sha256_files

from pipeline_helpers import ROOT

RUNGS = ("240p", "480p", "720p")


@pytest.fixture(scope="module")
def ladder_input(make_source, tmp_path_factory):
    base = tmp_path_factory.mktemp("encode")
    ingest = base / "ingest"
    ingest.mkdir()
    shutil.copyfile(make_source(duration_s=3.0, width=1280, height=720, fps=30), ingest / f"{stages.SOURCE_STEM}.mp4")
    spec = Project.load(ROOT).spec("vod")
    return base, ingest, probe(ingest / f"{stages.SOURCE_STEM}.mp4"), spec


def scratch(base: Path, name: str) -> Path:
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def test_decoder_fed_lanes_give_the_bytes_of_one_run_per_output(ladder_input):
    base, ingest, info, spec = ladder_input
    rungs = [spec.rendition(n) for n in RUNGS]
    tools = stages.Tools(threads=1, lanes=2, fanout_bits_per_pixel=0.0)  # any source counts as dense
    work = {n: scratch(base / "ladder", n) for n in [*RUNGS, "thumbnails"]}
    shared = stages.encode_ladder(ingest, info, spec, rungs, True, tools, work)

    decoder = shared["720p"].runs[0].argv
    assert "rawvideo" in decoder and decoder[-1].endswith(".nut")  # one decode, fanned out
    assert shared["240p"].runs[0] is shared["720p"].runs[0]  # ... recorded in each output's runs
    for rung in rungs:
        alone = stages.encode_rendition(ingest, info, spec, rung, tools, scratch(base / "alone", rung.name))
        assert sha256_file(shared[rung.name].path) == sha256_file(alone.path), rung.name
    thumbs = stages.thumbnails(ingest, info, spec.thumbnails, tools, scratch(base / "alone", "thumbnails"))
    got, want = sha256_files(shared["thumbnails"].path), sha256_files(thumbs.path)
    assert [(p.relative_to(shared["thumbnails"].path), h) for p, h in got.items()] == \
           [(p.relative_to(thumbs.path), h) for p, h in want.items()]


def test_a_failing_lane_stops_the_decoder_and_is_the_error_raised(ladder_input):
    base, ingest, info, spec = ladder_input
    rungs = [spec.rendition(n) for n in RUNGS]
    work = {n: scratch(base / "failing", n) for n in RUNGS}
    work["720p"].rmdir()  # the 720p lane cannot open its output
    with pytest.raises(FFmpegFailed) as caught:
        stages.encode_ladder(ingest, info, spec, rungs, False, stages.Tools(threads=1, lanes=2, fanout_bits_per_pixel=0.0), work)
    assert "720p.mp4" in " ".join(caught.value.result.argv)  # the lane's failure, not its consequences
    assert not caught.value.result.stopped_by  # it failed by itself; the decoder was stopped


def test_a_light_source_is_decoded_by_each_lane(ladder_input):
    base, ingest, info, spec = ladder_input
    assert info.video_bits_per_pixel is not None and info.video_bits_per_pixel < 1.0
    rungs = [spec.rendition(n) for n in RUNGS]
    work = {n: scratch(base / "light", n) for n in RUNGS}
    shared = stages.encode_ladder(ingest, info, spec, rungs, False, stages.Tools(threads=1, lanes=2), work)
    lane_inputs = {r.name: shared[r.name].runs[0].argv[shared[r.name].runs[0].argv.index("-i") + 1] for r in rungs}
    assert all(i.endswith(f"{stages.SOURCE_STEM}.mp4") for i in lane_inputs.values()), lane_inputs
    assert len({id(shared[r.name].runs[0]) for r in rungs}) == 2  # two lanes, no decoder process
