from pathlib import Path

import pytest
import yaml

from mpegflow_dagster import SpecError, load_spec
from mpegflow_dagster.presets import PresetError, load_presets
from mpegflow_dagster.provenance import code_version

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "resources" / "presets"
DEFAULT = ROOT / "resources" / "pipelines" / "vod.yaml"


def write_spec(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load(DEFAULT.read_text())
    raw.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_default_spec_loads_with_its_presets():
    spec = load_spec(DEFAULT, PRESETS)
    assert [r.name for r in spec.ladder] == ["240p", "480p", "720p", "1080p"]
    assert spec.preset_for(spec.rendition("720p")).ref == "x264-vod@1"
    assert spec.hls.segment_s % spec.gop_s == 0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"gop_s": 3}, "must be a multiple of gop_s"),
        (
            {"ladder": [{"name": "720p", "height": 720, "video_bitrate_kbps": 1}] * 2},
            "repeated: 720p",
        ),
        (
            {
                "ladder": [
                    {"name": "720p", "height": 720, "video_bitrate_kbps": 1, "preset": "nope"}
                ]
            },
            "unknown preset(s) nope",
        ),
        ({"captions": {"rendition": "4k"}}, "captions.rendition '4k' is not a ladder rung"),
        (
            {"ladder": [{"name": "720p", "height": 720, "video_bitrate_kbps": -5}]},
            "ladder.0.video_bitrate_kbps",
        ),
        ({"thumbnails": {"interval": 5}}, "thumbnails.interval: Extra inputs are not permitted"),
        ({"name": "Bad Name"}, "name: String should match pattern"),
        ({"hls": {"above_source": "skip"}}, "hls.above_source: Input should be 'drop' or 'keep'"),
    ],
)
def test_invalid_specs_name_the_file_and_field(tmp_path, changes, message):
    path = write_spec(tmp_path, **changes)
    with pytest.raises(SpecError) as err:
        load_spec(path, PRESETS)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml", PRESETS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad, PRESETS)
    bad.write_text("- a list")
    with pytest.raises(SpecError, match="must contain a mapping"):
        load_spec(bad, PRESETS)


def test_presets_are_versioned_and_unique(tmp_path):
    (tmp_path / "a.yaml").write_text("name: p\nversion: 1\n")
    (tmp_path / "b.yaml").write_text("name: p\nversion: 2\n")
    with pytest.raises(PresetError, match="defined twice"):
        load_presets(tmp_path)
    (tmp_path / "b.yaml").write_text("name: q\n")
    with pytest.raises(PresetError, match="b.yaml"):
        load_presets(tmp_path)


def test_code_version_changes_with_what_shapes_the_output():
    spec = load_spec(DEFAULT, PRESETS)
    r720 = spec.rendition("720p")
    base = code_version(r720, spec.preset_for(r720))
    faster = r720.model_copy(update={"video_bitrate_kbps": 3000})
    bumped = spec.preset_for(r720).model_copy(update={"version": 2})
    assert code_version(faster, spec.preset_for(r720)) != base
    assert code_version(r720, bumped) != base
    assert code_version(r720, spec.preset_for(r720)) == base
    assert code_version(r720, spec.preset_for(r720), encoder_build="abc") == f"{base}+abc"


@pytest.mark.parametrize(
    "upscale, above_source, packaged",
    [(False, None, False), (True, None, True), (True, "drop", False), (False, "keep", True)],
)
def test_rungs_above_the_source_are_packaged_only_when_kept(
    tmp_path, upscale, above_source, packaged
):
    hls = {"segment_s": 4, **({"above_source": above_source} if above_source else {})}
    spec = load_spec(write_spec(tmp_path, upscale=upscale, hls=hls), PRESETS)
    assert spec.packages_above_source is packaged
