"""The examples in examples/ run: stages of your own composed with the built-in pipeline by edges."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, Definitions, instance_for_test
from pipeline_helpers import ROOT, run_cli, temp_project

from examples.audio_loudnorm import audio_loudnorm
from examples.preview import teaser
from examples.watermark import watermarked
from mpegflow_dagster.media.probe import probe
from mpegflow_dagster.runs import materialize_video
from mpegflow_dagster.spec import load_spec

pytestmark = pytest.mark.pipeline
OWN = [audio_loudnorm, watermarked, teaser]


def integrated_lufs(path: Path) -> float:
    """EBU R128 integrated loudness as FFmpeg's ebur128 filter measures it."""
    err = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-i",
            str(path),
            "-af",
            "ebur128",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", err)[-1])


@pytest.fixture(scope="module")
def loud_source(tmp_path_factory) -> Path:
    """A 6 s clip whose tone is about 10 LU louder than -23 LUFS."""
    out = tmp_path_factory.mktemp("loud") / "loud.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=854x480:rate=25:duration=6",  # 480p is at its own height
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=6",
            "-af",
            "volume=8dB",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            str(out),
        ],
        check=True,
    )
    return out


def latest(instance, key: str):
    return (
        instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey.from_user_string(key), asset_partitions=["loud"]),
            limit=1,
        )
        .records[0]
        .asset_materialization.metadata
    )


def test_the_three_examples_compose_with_the_built_in_pipeline(tmp_path, loud_source):
    project = temp_project(tmp_path).model_copy(
        update={
            "specs": [
                load_spec(
                    ROOT / "examples" / "pipelines" / "vod.yaml", ROOT / "resources" / "presets"
                )
            ]
        }
    )
    spec = project.spec()
    with instance_for_test() as instance:
        result = materialize_video(
            project, spec, "loud", instance=instance, source=loud_source, own_stages=OWN
        )
        assert result.success
        storage = Path(project.settings.storage_dir)

        # (1) loudness: measured loud, delivered at -23 LUFS, both FFmpeg passes in provenance
        audio = latest(instance, "vod/audio_loudnorm")
        assert audio["measured_lufs"].value > -16
        assert (
            abs(integrated_lufs(storage / "vod" / "audio_loudnorm" / "loud" / "audio.m4a") + 23)
            <= 1.0
        )
        assert [
            argv[argv.index("-af") + 1].split("=")[0] for argv in audio["provenance"].value["argv"]
        ] == ["loudnorm", "loudnorm"]

        # (2) the user's rendition is a variant of the built-in package, beside the spec's rungs
        master = (Path(project.settings.delivery_dir) / "loud" / "hls" / "master.m3u8").read_text()
        assert [line for line in master.splitlines() if line.endswith("index.m3u8")] == [
            "240p/index.m3u8",
            "watermarked/index.m3u8",
            "480p/index.m3u8",
        ]  # by bandwidth
        assert "RESOLUTION=640x360" in master
        assert set(latest(instance, "vod/hls")["provenance"].value["inputs"]) == {
            "rendition_240p",
            "rendition_480p",
            "watermarked",
            "probe",  # the source's height: which rungs are above it
        }

        # (3) pipeline B's stage on pipeline A's output, same video partition
        rendition = latest(instance, "vod/rendition_480p")
        clip = latest(instance, "preview/teaser")
        assert clip["provenance"].value["inputs"] == {"rendition": rendition["sha256"].value}
        assert (
            abs(probe(storage / "preview" / "teaser" / "loud" / "teaser.mp4").duration - 3.0) < 0.2
        )

        # Unchanged: every stage of your own is skipped (the stored output reused, no FFmpeg).
        again = materialize_video(project, spec, "loud", instance=instance, own_stages=OWN)
        assert again.success
        for key in ("vod/audio_loudnorm", "vod/watermarked", "preview/teaser"):
            assert latest(instance, key)["reused"].value, key


def test_the_examples_code_location_loads():
    from examples.definitions import defs

    assert isinstance(defs, Definitions)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"vod/audio_loudnorm", "vod/watermarked", "preview/teaser", "vod/hls"} <= keys


def test_the_ott_example_runs_from_the_cli_on_a_sample_in_two_languages(tmp_path):
    """What the example's header says to type: a two-language sample through the OTT spec."""
    made = run_cli(
        ["sample", str(tmp_path / "in"), "--name", "film", "--duration", "2"]
        + ["--height", "540", "--languages", "en,fr"],
        tmp_path,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    spec = ROOT / "examples" / "pipelines" / "ott.yaml"
    out = tmp_path / "delivery"
    proc = run_cli(
        ["run", str(tmp_path / "in" / "film.mp4"), "--spec", str(spec)]
        + ["--out", str(out), "--json"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "succeeded"
    package = out / "film" / "hls"
    master = (package / "master.m3u8").read_text()
    # the rungs up to the source's 540p (two H.264, one HEVC, one AV1), each offered with AAC and
    # with E-AC-3; both languages in each audio group, English (the first) the default
    assert master.count("#EXT-X-STREAM-INF:") == 8
    assert master.count("hvc1.") == 2 and master.count("av01.") == 2
    assert 'GROUP-ID="audio_96k",LANGUAGE="en",NAME="English",DEFAULT=YES' in master
    assert 'GROUP-ID="audio_eac3_384k",LANGUAGE="fr",NAME="français",DEFAULT=NO' in master
    assert 'TYPE=SUBTITLES,GROUP-ID="subs",NAME="français",LANGUAGE="fr"' in master
    # the plain film.srt too, its language undetermined: unsaid (Shaka Packager refuses `und`)
    assert 'TYPE=SUBTITLES,GROUP-ID="subs",NAME="und",DEFAULT=NO' in master
    assert (package / "manifest.mpd").exists()
