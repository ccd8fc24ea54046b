"""A codec per rung: H.264, HEVC and AV1 ladders side by side, with keyframes on the same source
times, the same bytes on every run, codec strings read from the streams and the encoder's own
version in provenance; specs that cannot work fail when they load."""

import functools
import hashlib
import json
import subprocess
import threading
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from fractions import Fraction
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, instance_for_test
from pipeline_helpers import ROOT, project_with

from mpegflow_dagster import SpecError, load_spec
from mpegflow_dagster.media.build import build_encoders, detect_build
from mpegflow_dagster.media.classify import classify_exception
from mpegflow_dagster.media.cmaf import (
    PACKAGER_VERSION,
    MissingKey,
    PackagerNotFound,
    deployment_key,
    find_packager,
    packager_version,
)
from mpegflow_dagster.media.codecs import hdr10_params, video_options
from mpegflow_dagster.media.mp4 import read_mp4
from mpegflow_dagster.media.probe import ContentLight, Hdr10Metadata, parse_hdr10
from mpegflow_dagster.media.synth import write_srt
from mpegflow_dagster.presets import PresetError, load_presets
from mpegflow_dagster.project import Project, refuse_missing_encoders
from mpegflow_dagster.runs import materialize_video

PRESETS = ROOT / "resources" / "presets"
DEFAULT = ROOT / "resources" / "pipelines" / "vod.yaml"

LADDER = [
    {"name": "180p", "height": 180, "video_bitrate_kbps": 300, "audio_bitrate_kbps": 64},
    {"name": "180p_hevc", "height": 180, "video_bitrate_kbps": 200, "preset": "x265-vod"},
    {"name": "180p_av1", "height": 180, "video_bitrate_kbps": 200, "preset": "svtav1-vod"},
    {"name": "120p_av1", "height": 120, "video_bitrate_kbps": 120, "preset": "svtav1-vod"},
]
CHROMIUM = "/usr/bin/chromium"
FMP4 = {"segment_s": 2, "segment_type": "fmp4"}
CMAF = {"segment_s": 2, "segment_type": "cmaf"}


def spec_with(tmp_path: Path, **changes) -> Path:
    raw = {**yaml.safe_load(DEFAULT.read_text()), "captions": {"enabled": False}, **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def rung(preset: str, **extra) -> list[dict]:
    return [{"name": "360p", "height": 360, "video_bitrate_kbps": 500, "preset": preset} | extra]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ladder": rung("svtav1-vod")}, "HLS carries AV1 in fMP4 segments only"),
        ({"ladder": rung("x265-vod")}, "HLS carries HEVC in fMP4 segments only"),
        (
            {"ladder": rung("x265-vod", profile="high"), "hls": FMP4},
            "profile 'high' is not a HEVC profile (main, main10)",
        ),
        (
            {"ladder": rung("svtav1-vod", level="4.0"), "hls": FMP4},
            "leave level unset (libsvtav1 picks it)",
        ),
        (
            {"ladder": rung("svtav1-vod", video_bitrate_kbps=80000), "hls": FMP4},
            "its cap (video_bitrate_kbps x maxrate_factor = 120000 kb/s) is above the 100000",
        ),
        (
            {"ladder": rung("x265-main10-vod"), "hls": FMP4},
            "profile main10 goes with a 10-bit pix_fmt (yuv420p10le) and main with 8 bits; "
            "the preset's is yuv420p10le",
        ),
    ],
)
def test_a_rung_that_its_codec_cannot_make_fails_the_load_naming_rung_and_codec(
    tmp_path, changes, message
):
    with pytest.raises(SpecError) as err:
        load_spec(spec_with(tmp_path, **changes), PRESETS)
    assert "ladder rung 360p" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    "changes, field, message",
    [
        (
            {"audio": {"extra": [{"codec": "eac3", "bitrate_kbps": 384}]}},
            "(top level)",
            "audio.extra needs hls.segment_type: cmaf",
        ),
        (
            {"audio": {"extra": [{"codec": "opus", "bitrate_kbps": 96, "sample_rate": 44100}]}}
            | {"hls": CMAF},
            "audio.extra.0",
            "opus takes sample_rate 48000",
        ),
        (
            {"audio": {"extra": [{"codec": "ac3", "bitrate_kbps": 384, "channels": 8}]}}
            | {"hls": CMAF},
            "audio.extra.0",
            "ac3 carries at most 6 channels (5.1)",
        ),
    ],
)
def test_an_audio_codec_that_cannot_be_made_fails_the_load_naming_the_field(
    tmp_path, changes, field, message
):
    with pytest.raises(SpecError) as err:
        load_spec(spec_with(tmp_path, **changes), PRESETS)
    assert f"{field}: " in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    "preset, message",
    [
        ("encoder: libsvtav1\nspeed: 10\n", "libsvtav1 needs crf"),
        ("encoder: libx264\nspeed: veryfast\ncrf: 30\n", "crf is for SVT-AV1's capped CRF"),
        ("encoder: libsvtav1\nspeed: veryfast\ncrf: 30\n", "'veryfast' is not a libsvtav1 preset"),
        ("encoder: libvpx\n", "encoder: Input should be 'libx264', 'libx265' or 'libsvtav1'"),
    ],
)
def test_a_preset_its_encoder_cannot_run_names_the_file_and_setting(tmp_path, preset, message):
    (tmp_path / "bad.yaml").write_text(f"name: bad\nversion: 1\n{preset}")
    with pytest.raises(PresetError) as err:
        load_presets(tmp_path)
    assert "bad.yaml" in str(err.value) and message in str(err.value)


def test_an_encoder_the_ffmpeg_build_lacks_fails_the_load_naming_encoder_and_build(tmp_path):
    spec = load_spec(spec_with(tmp_path, ladder=LADDER, hls=FMP4), PRESETS)
    build, have = detect_build("ffmpeg"), build_encoders("ffmpeg")
    assert {"libx264", "libx265", "libsvtav1"} <= have  # Debian 12's FFmpeg
    refuse_missing_encoders(spec, build, have)
    with pytest.raises(SpecError) as err:
        refuse_missing_encoders(spec, build, have - {"libsvtav1"})
    said = str(err.value)
    assert "rung 120p_av1: preset svtav1-vod@1 names encoder libsvtav1" in said
    assert f"FFmpeg build at {build.path} ({build.version}) lacks" in said


def ffprobe(path: Path, entries: str, stream: str = "v:0") -> list[dict]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries", entries]
        + ["-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parsed = json.loads(out)
    return parsed.get("frames") or parsed["streams"]


def keyframe_times(path: Path) -> list[str]:
    frames = ffprobe(path, "frame=pts_time,key_frame")
    return [f["pts_time"] for f in frames if f["key_frame"] == 1]


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".provenance.json")
    }


def latest(instance, name: str) -> dict:
    """The metadata values of asset `vod/<name>`'s latest materialization of video `clip`."""
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(["vod", name]), asset_partitions=["clip"]), limit=1
    ).records
    assert record.asset_materialization is not None
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def audio_packets(path: Path) -> str:
    """The MD5 of a file's first audio stream's packets, whatever the container."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "md5", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# English first, French second and flagged the default (so the default is not merely the first)
TWO_LANGUAGES = {"languages": ("en", "fr"), "default_language": "fr"}


@contextmanager
def ran(base: Path, changes: dict, source: Path) -> Iterator[tuple[Project, DagsterInstance]]:
    """Video `clip` (`source`) through a project of the default spec with `changes`, on a Dagster
    instance of its own, which stays open for reading back what it recorded."""
    project = project_with(base, changes)
    with instance_for_test() as instance:
        result = materialize_video(
            project, project.spec(), "clip", instance=instance, source=source
        )
        assert result.success
        yield project, instance


@pytest.fixture(scope="module")
def multi_codec(tmp_path_factory, make_source) -> list[tuple[Path, dict]]:
    """Two runs of an H.264 + HEVC + AV1 ladder on the same 29.97 fps source, cut in time chunks
    (chunk_s 4, thumbnails every 2 s: cuts on the 2 s marks), each on its own storage: the
    delivery folder and each rendition's provenance."""
    source = make_source(duration_s=10.0, width=320, height=180, fps="30000/1001", **TWO_LANGUAGES)
    write_srt(source.with_name("clip.fr.srt"), 10.0, text="BONJOUR")
    write_srt(source.with_name("clip.en.srt"), 10.0, text="HELLO")
    source.with_name("clip.de.srt").write_bytes(b"\x00\xff JFIF not subtitles" * 50)
    changes = {
        "ladder": LADDER,
        "hls": CMAF,
        "chunk_s": 4.0,
        "captions": {"enabled": False},
        "thumbnails": {"interval_s": 2},
    }
    runs = []
    for n in (1, 2):
        base = tmp_path_factory.mktemp(f"codecs{n}")
        with ran(base, changes, source) as (project, instance):
            provenance = {}
            for r in LADDER:
                meta = latest(instance, f"rendition_{r['name']}")
                provenance[r["name"]] = {**meta["provenance"], "path": meta["path"]}
            provenance["emit"] = latest(instance, "emit")
            provenance["audio"] = latest(instance, "audio")
            provenance["subtitles"] = latest(instance, "subtitles")
        runs.append((Path(project.settings.delivery_dir) / "clip", provenance))
    return runs


def test_every_codec_has_its_keyframes_on_the_same_source_times_in_chunks(multi_codec):
    delivery, provenance = multi_codec[0]
    assert all(len(provenance[r["name"]]["argv"]) > 2 for r in LADDER)  # chunks, audio, join
    mp4s = {r["name"]: Path(provenance[r["name"]]["path"]) for r in LADDER}
    h264 = keyframe_times(mp4s["180p"])
    assert len(h264) == 5 and h264[1] == "2.002000"  # the first frame at or after each 2 s mark
    for name, mp4 in mp4s.items():
        assert keyframe_times(mp4) == h264, name
        [stream] = ffprobe(mp4, "stream=nb_frames")
        assert int(stream["nb_frames"]) == 300, name  # the joined chunks: every frame once


def test_two_runs_give_the_same_bytes_in_every_codec_and_package(multi_codec):
    (first, _), (second, _) = multi_codec
    hashes = tree_hashes(first)
    assert any(k.startswith("hls/180p_av1/") and k.endswith(".m4s") for k in hashes)
    assert hashes == tree_hashes(second)


def test_codec_strings_come_from_the_streams_and_each_codec_keeps_its_resolution(multi_codec):
    delivery, provenance = multi_codec[0]
    master = (delivery / "hls" / "master.m3u8").read_text()
    codecs = dict(
        (line.split("\n")[1].split("/")[0], line.split('CODECS="')[1].split('"')[0])
        for line in master.split("#EXT-X-STREAM-INF:")[1:]
    )
    assert set(codecs) == {r["name"] for r in LADDER}  # 180p in H.264, HEVC and AV1: three variants
    [hevc] = ffprobe(Path(provenance["180p_hevc"]["path"]), "stream=profile,level")
    assert hevc["profile"] == "Main"
    assert codecs["180p_hevc"] == f"hvc1.1.6.L{hevc['level']}.90,mp4a.40.2"
    assert codecs["180p_av1"].startswith("av01.0.") and codecs["180p_av1"].endswith(
        "M.08,mp4a.40.2"
    )
    assert codecs["180p"].startswith("avc1.6400")  # High profile
    # the sample entry (parameter sets in it, as Apple's players need) of the packaged track too
    init = read_mp4(delivery / "hls" / "180p_hevc" / "init.mp4")
    assert init.video.codec == codecs["180p_hevc"].split(",")[0]


def test_provenance_names_each_encoder_as_it_names_itself(multi_codec):
    _, provenance = multi_codec[0]
    assert provenance["180p"]["encoder_libraries"]["x264"].startswith("core ")
    assert provenance["180p_hevc"]["encoder_libraries"]["x265"].startswith("3.")
    assert provenance["180p_av1"]["encoder_libraries"] == {"svt-av1": "v1.4.1"}
    assert provenance["180p_av1"]["preset"] == "svtav1-vod@1"
    assert provenance["180p_av1"]["bit_exact"] is True


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served(root: Path) -> Iterator[str]:
    """`root` over HTTP on 127.0.0.1, as a CDN would serve the delivery folder."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def play(
    player: str, delivery: Path, manifest: str, tmp_path: Path, clearkey: Optional[dict] = None
) -> dict:
    """What tests/ui/play.mjs saw playing `manifest` of the delivery folder (served over HTTP),
    with `clearkey` ({"kid", "key"} in hex) for CENC segments."""
    job = {"player": player, "manifest": manifest, "chromium": CHROMIUM}
    if clearkey:
        job["clearkey"] = clearkey
    path = tmp_path / f"{player}.json"
    with served(delivery) as base:
        path.write_text(json.dumps({**job, "page": base}))
        done = subprocess.run(
            ["node", "play.mjs", str(path)],
            cwd=ROOT / "tests" / "ui",
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    # this Chromium decodes H.264 and AV1; HEVC it does not (no platform decoder), so players
    # leave it out and the tests above check its stream and CODECS with ffprobe
    assert report["supported"] == {
        "avc1.640028": True,
        "hvc1.1.6.L60.90": False,
        "av01.0.00M.08": True,
    }
    assert not [e for e in report["errors"] if e.endswith("fatal=true")], report["errors"]
    for track in report["audioPlayed"]:  # switched to, its segments buffered, the clock moving
        assert track["played"], track
    return report


PLAYABLE = {(r["name"].split("_")[-1] if "_" in r["name"] else "avc1", r["height"]) for r in LADDER}
PLAYABLE -= {("hevc", 180)}


def played(report: dict) -> set[tuple[str, int]]:
    """(codec family, height) of every variant the player offered, each of which must have
    played: selected, its segments buffered, frames decoded and the clock moving."""
    for v in report["variants"]:
        assert v["played"], json.dumps(v)  # whole: what it saw (pytest shortens a dict)
    return {
        ("av1" if v["codecs"].startswith("av01") else v["codecs"][:4], v["height"])
        for v in report["variants"]
    }


@pytest.mark.slow
@pytest.mark.parametrize("player, manifest", [("hls", "master.m3u8"), ("dash", "manifest.mpd")])
def test_hls_js_and_dash_js_in_chromium_play_every_h264_and_av1_variant_and_audio_language(
    multi_codec, tmp_path, player, manifest
):
    """One package, one set of segments: hls.js through the HLS playlist, dash.js through the
    MPD."""
    delivery, _ = multi_codec[0]
    report = play(player, delivery, f"hls/{manifest}", tmp_path)
    assert played(report) == PLAYABLE
    assert sorted(report["subtitles"]) == ["en", "fr"]
    # both languages offered and each played; the source's default (French) picked first
    assert sorted(a["lang"] for a in report["audio"]) == ["en", "fr"]
    assert [a["lang"] for a in report["audioPlayed"]] == [a["lang"] for a in report["audio"]]
    assert report["firstAudio"] == "fr"


def test_hls_and_dash_point_at_one_set_of_cmaf_segments(multi_codec):
    """Each track's folder holds its init segment and media segments once; the DASH MPD's
    SegmentTemplate and the HLS media playlist of that folder name exactly those files (a
    subtitle track's cues are there twice: WebVTT segments for HLS, fMP4 for dash.js)."""
    delivery, _ = multi_codec[0]
    package = delivery / "hls"
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    mpd = ET.parse(package / "manifest.mpd").getroot()
    assert mpd.get("type") == "static"
    folders = {}
    for rep in mpd.iterfind(".//d:Representation", ns):
        template = rep.find("d:SegmentTemplate", ns)
        assert template is not None
        folder = template.get("initialization", "").split("/")[0]
        count = sum(
            1 + int(seg.get("r", "0")) for seg in template.iterfind("d:SegmentTimeline/d:S", ns)
        )
        start = int(template.get("startNumber", "1"))
        media = template.get("media", "")
        folders[folder] = {
            media.replace("$Number%05d$", f"{n:05d}").split("/")[1]
            for n in range(start, start + count)
        }
    texts = {"subtitles_en", "subtitles_fr"}
    audio = {f"audio_{kbps}k_{lang}" for kbps in (64, 128) for lang in ("en", "fr")}
    assert set(folders) == {r["name"] for r in LADDER} | audio | texts
    for folder, segments in folders.items():
        on_disk = {p.name for p in (package / folder).iterdir()}
        playlist = (package / folder / "index.m3u8").read_text()
        listed = {ln for ln in playlist.splitlines() if ln.endswith((".m4s", ".vtt"))}
        if folder in texts:  # HLS: segmented WebVTT; DASH: the same cues in fMP4 (wvtt)
            assert listed == {n.replace(".m4s", ".vtt") for n in segments}, folder
            assert on_disk == segments | listed | {"init.mp4", "index.m3u8"}, folder
            assert "#EXT-X-MAP" not in playlist
        else:
            assert listed == segments, folder
            assert on_disk == segments | {"init.mp4", "index.m3u8"}, folder
            assert '#EXT-X-MAP:URI="init.mp4"' in playlist
    fr = (package / "subtitles_fr" / "00002.vtt").read_text()
    assert fr.startswith("WEBVTT") and "BONJOUR 2" in fr
    langs = {a.get("lang") for a in mpd.iterfind(".//d:AdaptationSet[@contentType='text']", ns)}
    assert langs == {"en", "fr"}
    emitted = multi_codec[0][1]["emit"]
    assert emitted["hls_entry"].endswith("/clip/hls/master.m3u8")
    assert emitted["hls_dash_entry"].endswith("/clip/hls/manifest.mpd")
    audio_sets = {
        a.get("lang"): [r.get("value") for r in a.iterfind("d:Role", ns)]
        for a in mpd.iterfind(".//d:AdaptationSet[@contentType='audio']", ns)
    }
    assert audio_sets == {"en": [], "fr": ["main"]}  # one a language, both bitrates in it
    master = (package / "master.m3u8").read_text()
    # each rung with the audio bitrate of its rung (the AV1 and HEVC rungs: the preset's 128 k)
    assert 'AUDIO="audio_64k"' in master.split("180p/index.m3u8")[0].split("\n")[-2]
    for kbps in (64, 128):
        assert (
            f'TYPE=AUDIO,GROUP-ID="audio_{kbps}k",LANGUAGE="en",NAME="English",DEFAULT=NO,'
            f'AUTOSELECT=YES,CHANNELS="2",URI="audio_{kbps}k_en/index.m3u8"'
        ) in master
        assert f'GROUP-ID="audio_{kbps}k",LANGUAGE="fr",NAME="français",DEFAULT=YES' in master
    assert master.count("TYPE=AUDIO") == 4
    # each track is its stream of the source, its language in its header
    tracks = Path(multi_codec[0][1]["audio"]["path"])
    for lang, tag in (("en", "eng"), ("fr", "fra")):
        rates = []
        for kbps in (64, 128):
            m4a = tracks / f"audio_{kbps}k_{lang}.m4a"
            [stream] = ffprobe(m4a, "stream=bit_rate:stream_tags=language", "a:0")
            assert stream["tags"]["language"] == tag
            rates.append(int(stream["bit_rate"]))
        assert rates[0] < rates[1]
    # a rendition holds the source's default audio (French, the second stream): the same packets
    rendition = Path(multi_codec[0][1]["180p"]["path"])
    assert audio_packets(rendition) == audio_packets(tracks / "audio_64k_fr.m4a")
    assert audio_packets(rendition) != audio_packets(tracks / "audio_64k_en.m4a")
    assert 'TYPE=SUBTITLES,GROUP-ID="subs",NAME="français",LANGUAGE="fr"' in master
    assert master.count('SUBTITLES="subs"') == len(LADDER)


def test_a_source_without_audio_still_packages_as_cmaf(tmp_path, make_source):
    source = make_source(duration_s=4.0, width=320, height=180, audio=False)
    ladder = [{"name": "180p", "height": 180, "video_bitrate_kbps": 300}]
    changes = {"ladder": ladder, "hls": CMAF, "captions": {"enabled": False}}
    with ran(tmp_path / "p", changes, source) as (project, instance):
        assert latest(instance, "audio")["source_streams"] == 0
    package = Path(project.settings.delivery_dir) / "clip" / "hls"
    assert sorted(p.name for p in package.iterdir() if p.is_dir()) == ["180p"]
    master = (package / "master.m3u8").read_text()
    assert "AUDIO" not in master and master.count("#EXT-X-STREAM-INF:") == 1
    mpd = (package / "manifest.mpd").read_text()
    assert 'contentType="video"' in mpd and 'contentType="audio"' not in mpd


def test_a_second_audio_codec_is_a_group_of_its_own_that_every_rung_is_offered_with(
    tmp_path, make_source
):
    source = make_source(duration_s=4.0, width=320, height=180, **TWO_LANGUAGES)
    ladder = [
        {"name": "120p", "height": 120, "video_bitrate_kbps": 150, "audio_bitrate_kbps": 64},
        {"name": "180p", "height": 180, "video_bitrate_kbps": 300, "audio_bitrate_kbps": 64},
    ]
    extra = [
        {"codec": "eac3", "bitrate_kbps": 384, "channels": 6},
        {"codec": "opus", "bitrate_kbps": 96},
    ]
    changes = {
        "ladder": ladder,
        "hls": CMAF,
        "audio": {"extra": extra},
        "captions": {"enabled": False},
    }
    with ran(tmp_path / "p", changes, source) as (project, _):
        package = Path(project.settings.delivery_dir) / "clip" / "hls"
    master = (package / "master.m3u8").read_text()
    offered = {}
    for entry in master.split("#EXT-X-STREAM-INF:")[1:]:
        attrs, uri = entry.split("\n")[:2]
        group = attrs.split('AUDIO="')[1].split('"')[0]
        offered.setdefault(uri, {})[group] = attrs.split('CODECS="')[1].split('"')[0]
    assert set(offered) == {"120p/index.m3u8", "180p/index.m3u8"}
    for uri, groups in offered.items():
        assert set(groups) == {"audio_64k", "audio_eac3_384k", "audio_opus_96k"}, uri
        avc = groups["audio_64k"].split(",")[0]
        assert groups == {
            "audio_64k": f"{avc},mp4a.40.2",
            "audio_eac3_384k": f"{avc},ec-3",
            "audio_opus_96k": f"{avc},opus",
        }
    for group in ("audio_eac3_384k", "audio_opus_96k"):  # every language in each codec
        assert f'GROUP-ID="{group}",LANGUAGE="fr",NAME="français",DEFAULT=YES' in master
        assert f'GROUP-ID="{group}",LANGUAGE="en",NAME="English",DEFAULT=NO' in master
    [eac3] = ffprobe(
        package / "audio_eac3_384k_fr" / "init.mp4", "stream=codec_name,channels", "a:0"
    )
    assert (eac3["codec_name"], eac3["channels"]) == ("eac3", 6)
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    mpd = ET.parse(package / "manifest.mpd").getroot()
    sets = {
        (a.get("lang"), rep.get("codecs"))
        for a in mpd.iterfind(".//d:AdaptationSet[@contentType='audio']", ns)
        for rep in a.iterfind("d:Representation", ns)
    }
    assert sets == {(lang, c) for lang in ("en", "fr") for c in ("mp4a.40.2", "ec-3", "opus")}


def test_a_subtitle_file_that_is_not_text_is_left_out_alone_and_named(multi_codec):
    subtitles = multi_codec[0][1]["subtitles"]
    assert subtitles["languages"] == "en, fr"
    assert subtitles["rejected"].startswith("de: the de subtitle file is not a valid SRT or WebVTT")


def dvd_subtitle_stream(out: Path) -> Path:
    """An MPEG program stream of one DVD subtitle (a 2x2 picture shown at 1 s), written by hand:
    FFmpeg 5.1 encodes bitmap subtitles from bitmap ones only."""
    show = bytes.fromhex("0000 0020 01 033210 04fff0 05000001000001 0600040006 ff")
    hide = bytes.fromhex("0064 0020 02 ff")
    body = bytes.fromhex("0001 0001") + show + hide  # each field one line of color 1
    spu = (4 + len(body)).to_bytes(2, "big") + (8).to_bytes(2, "big") + body
    pts = bytes.fromhex("210005bf21")  # 90000: 1 s
    payload = bytes.fromhex("818005") + pts + b"\x20" + spu  # private stream 1, subpicture 0
    pes = bytes.fromhex("000001bd") + len(payload).to_bytes(2, "big") + payload
    out.write_bytes(bytes.fromhex("000001ba4400040004010189c3f8") + pes + bytes.fromhex("000001b9"))
    return out


@pytest.fixture(scope="module")
def embedded_subtitles(tmp_path_factory, make_source) -> tuple[Path, dict]:
    """One run of one H.264 rung on an MKV with a Spanish subrip stream, a French one without a
    cue and a DVD (bitmap) one, beside sidecars `clip.es.srt` and `clip.fre.srt`: the delivery
    folder and the subtitles asset's metadata."""
    tmp_path = tmp_path_factory.mktemp("embedded")
    clip = make_source(duration_s=4.0, width=320, height=180, fps=30)
    source = tmp_path / "in" / "clip.mkv"
    source.parent.mkdir()
    hola = write_srt(tmp_path / "hola.srt", 4.0, text="HOLA")
    late = tmp_path / "late.srt"  # its one cue is past the 4 s kept: a stream without a cue
    late.write_text("1\n00:01:40,000 --> 00:01:42,000\nTARDE\n")
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(clip), "-i", str(hola)]
        + ["-i", str(late), "-i", str(dvd_subtitle_stream(tmp_path / "dvd.mpg"))]
        + ["-map", "0:v", "-map", "0:a", "-map", "1", "-map", "2", "-map", "3", "-c", "copy"]
        + ["-metadata:s:s:0", "language=spa", "-metadata:s:s:0", "title=Comentarios"]
        + ["-metadata:s:s:1", "language=fre", "-t", "4"]
        + [str(source)],
        check=True,
    )
    write_srt(source.with_name("clip.es.srt"), 4.0, text="ADIOS")
    write_srt(source.with_name("clip.fre.srt"), 4.0, text="SALUT")
    changes = {"ladder": [LADDER[0]], "hls": CMAF, "captions": {"enabled": False}}
    with ran(tmp_path / "p", changes, source) as (project, instance):
        subtitles = latest(instance, "subtitles")
    return Path(project.settings.delivery_dir) / "clip", subtitles


@pytest.mark.pipeline
def test_text_subtitle_streams_of_the_source_become_tracks_beside_the_sidecars(
    embedded_subtitles,
):
    """The sidecars come first, the stream of a language already there is `es-2`, named by its
    title (HLS NAME, DASH Label; a sidecar by its language's own name), the stream without a cue
    and the bitmap one are left out and named."""
    delivery, subtitles = embedded_subtitles
    assert subtitles["tracks"] == (
        "es: the es subtitle file; fr: the fre subtitle file; es-2: stream 2 (subrip)"
    )
    assert subtitles["rejected"] == (
        "stream 3 (subrip): it holds no cue; stream 4 (dvd_subtitle): bitmap, not text"
    )
    package = delivery / "hls"
    master = (package / "master.m3u8").read_text()
    tracks = [("es", "es", "español"), ("fr", "fr", "français"), ("es-2", "es", "Comentarios")]
    for folder, language, name in tracks:
        assert (
            f'TYPE=SUBTITLES,GROUP-ID="subs",NAME="{name}",LANGUAGE="{language}",DEFAULT=NO,'
            f'AUTOSELECT=YES,URI="subtitles_{folder}/index.m3u8"'
        ) in master
    cues = "".join(p.read_text() for p in sorted((package / "subtitles_es-2").glob("*.vtt")))
    assert "HOLA 1" in cues and "HOLA 2" in cues
    assert "ADIOS 1" in (package / "subtitles_es" / "00001.vtt").read_text()
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    mpd = ET.parse(package / "manifest.mpd").getroot()
    texts = mpd.iterfind(".//d:AdaptationSet[@contentType='text']", ns)
    labels = {(a.get("lang"), a.findtext("d:Label", namespaces=ns)) for a in texts}
    assert labels == {("es", "español"), ("fr", "français"), ("es", "Comentarios")}


def test_cmaf_without_the_packager_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MPEGFLOW_PACKAGER", str(tmp_path / "packager"))
    with pytest.raises(PackagerNotFound) as err:
        find_packager()
    assert f"at MPEGFLOW_PACKAGER={tmp_path / 'packager'}" in str(err.value)
    assert "Run `make packager`" in str(err.value)
    assert classify_exception(err.value).reason == "config.packager_not_found"
    monkeypatch.delenv("MPEGFLOW_PACKAGER")
    assert packager_version(find_packager()).startswith(f"v{PACKAGER_VERSION}-")


# HDR10 static metadata as x265 takes it: a P3-D65 mastering display of 0.005-1000 cd/m² (ST 2086
# units: 0.00002 for x and y, 0.0001 cd/m²), MaxCLL 1000 and MaxFALL 400 cd/m²
MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"
HDR10_SIDE_DATA = {
    "Mastering display metadata": {
        **{"green_x": 13250, "green_y": 34500, "blue_x": 7500, "blue_y": 3000},
        **{"red_x": 34000, "red_y": 16000, "white_point_x": 15635, "white_point_y": 16450},
        **{"max_luminance": 10000000, "min_luminance": 50},
    },
    "Content light level metadata": {"max_content": 1000, "max_average": 400},
}


def pq_source(out: Path, seconds: float = 4.0) -> Path:
    """A 10-bit HDR10 (PQ, BT.2020) clip with audio and HDR10 metadata: lavfi's pattern tagged as
    PQ, kept near lossless in HEVC Main 10."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi"]
        + ["-i", f"testsrc2=size=320x180:rate=30:duration={seconds}", "-f", "lavfi"]
        + ["-i", f"sine=frequency=440:duration={seconds}", "-vf"]
        + [
            "format=yuv420p10le,setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc"
        ]
        + ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params"]
        + [f"crf=10:log-level=error:master-display={MASTER_DISPLAY}:max-cll=1000,400"]
        + ["-color_primaries", "bt2020", "-color_trc", "smpte2084", "-colorspace", "bt2020nc"]
        + ["-c:a", "aac", "-shortest", str(out)],
        check=True,
    )
    return out


def hdr10_side_data(path: Path) -> dict[str, dict[str, int]]:
    """The HDR10 side data of the first frame, each chromaticity and luminance in ST 2086's units
    (the precision HEVC has and AV1 exceeds: AV1 states x and y in 1/65536)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-read_intervals", "%+#1", "-select_streams", "v:0"]
        + ["-show_frames", "-show_entries", "frame=side_data_list", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [frame] = json.loads(out)["frames"]
    found = {}
    for side in frame.get("side_data_list", []):
        kind = side.pop("side_data_type")
        if kind in HDR10_SIDE_DATA:
            unit = {k: 10_000 if k.endswith("luminance") else 50_000 for k in side}
            found[kind] = {
                k: v if isinstance(v, int) else round(Fraction(v) * unit[k])
                for k, v in side.items()
            }
    return found


# ffprobe's side data of the first frame of an AV1 encode of MASTER_DISPLAY: x and y in 1/65536,
# luminance in 1/256 (max) and 1/16384 cd/m² (min)
AV1_MASTERING = {
    "side_data_type": "Mastering display metadata",
    **{"red_x": "44564/65536", "red_y": "20972/65536", "green_x": "17367/65536"},
    **{"green_y": "45220/65536", "blue_x": "9830/65536", "blue_y": "3932/65536"},
    **{"white_point_x": "20493/65536", "white_point_y": "21561/65536"},
    **{"min_luminance": "82/16384", "max_luminance": "256000/256"},
}
CONTENT_LIGHT = {
    "side_data_type": "Content light level metadata",
    "max_content": 1000,
    "max_average": 400,
}


def test_hdr10_metadata_becomes_each_encoders_parameters_in_its_own_syntax():
    """x265 gets ST 2086's integers (an AV1 source's finer values rounded back), SVT-AV1 decimals;
    a preset's own pair wins, and a mastering display with a part unset is left out."""
    hdr10 = parse_hdr10({"frames": [{"side_data_list": [AV1_MASTERING, CONTENT_LIGHT]}]})
    assert hdr10 is not None
    x265 = {"master-display": MASTER_DISPLAY, "max-cll": "1000,400"}
    assert hdr10_params("libx265", hdr10) == x265
    assert hdr10_params("libsvtav1", hdr10) == {
        "mastering-display": "G(0.2649993896484375,0.69000244140625)"
        "B(0.149993896484375,0.05999755859375)R(0.67999267578125,0.32000732421875)"
        "WP(0.3126983642578125,0.3289947509765625)L(1000.0,0.0050048828125)",
        "content-light": "1000,400",
    }
    options = video_options(
        "libx265",
        **{"speed": "fast", "profile": None, "level": None, "crf": None, "threads": 1},
        **{"bitrate_kbps": 300, "maxrate_kbps": 450, "gop_frames": 60, "keyframes": "1"},
        params=[("max-cll", "0,0")],
        hdr10=hdr10,
    )
    pairs = str(options["x265-params"]).split(":")
    assert f"master-display={MASTER_DISPLAY}" in pairs
    assert [p for p in pairs if p.startswith("max-cll=")] == ["max-cll=0,0"]
    unset = AV1_MASTERING | {"min_luminance": "0/0"}
    assert parse_hdr10({"frames": [{"side_data_list": [unset, CONTENT_LIGHT]}]}) == Hdr10Metadata(
        content_light=ContentLight(max_cll=1000, max_fall=400)
    )


def test_an_hdr_source_stays_pq_in_10_bit_rungs_and_is_tone_mapped_to_sdr_in_h264(tmp_path):
    """Its HDR10 metadata too, which FFmpeg 5.1 does not hand the encoders: in the 10-bit rungs
    (and their recorded argv), not in the tone-mapped one."""
    source = pq_source(tmp_path / "hdr.mp4")
    assert hdr10_side_data(source) == HDR10_SIDE_DATA
    ladder = [
        {"name": "180p", "height": 180, "video_bitrate_kbps": 300},
        {"name": "180p_hevc", "height": 180, "video_bitrate_kbps": 250, "profile": "main10"}
        | {"preset": "x265-main10-vod"},
        {"name": "180p_av1", "height": 180, "video_bitrate_kbps": 200}
        | {"preset": "svtav1-10bit-vod"},
    ]
    changes = {"ladder": ladder, "hls": FMP4, "captions": {"enabled": False}}
    with ran(tmp_path / "p", changes, source) as (project, instance):
        [hevc_argv] = latest(instance, "rendition_180p_hevc")["provenance"]["argv"]
        assert f"master-display={MASTER_DISPLAY}" in hevc_argv[hevc_argv.index("-x265-params") + 1]
    out = Path(project.settings.delivery_dir) / "clip" / "hls"
    stored = Path(project.settings.storage_dir) / "vod"
    entries = "stream=pix_fmt,color_transfer,color_primaries,profile"
    [h264] = ffprobe(stored / "rendition_180p" / "clip" / "180p.mp4", entries)
    [hevc] = ffprobe(stored / "rendition_180p_hevc" / "clip" / "180p_hevc.mp4", entries)
    [av1] = ffprobe(stored / "rendition_180p_av1" / "clip" / "180p_av1.mp4", entries)
    assert (h264["pix_fmt"], h264["color_transfer"], h264["color_primaries"]) == (
        "yuv420p",
        "bt709",
        "bt709",
    )
    for kept in (hevc, av1):
        assert (kept["pix_fmt"], kept["color_transfer"], kept["color_primaries"]) == (
            "yuv420p10le",
            "smpte2084",
            "bt2020",
        )
    assert hevc["profile"] == "Main 10"
    for n in ("180p_hevc", "180p_av1"):
        assert hdr10_side_data(stored / f"rendition_{n}" / "clip" / f"{n}.mp4") == HDR10_SIDE_DATA
    assert hdr10_side_data(stored / "rendition_180p" / "clip" / "180p.mp4") == {}
    master = (out / "master.m3u8").read_text()
    lines = {ln.split("\n")[1].split("/")[0]: ln for ln in master.split("#EXT-X-STREAM-INF:")[1:]}
    assert "VIDEO-RANGE=SDR" in lines["180p"]
    assert "VIDEO-RANGE=PQ" in lines["180p_hevc"] and 'CODECS="hvc1.2.4.' in lines["180p_hevc"]
    assert "VIDEO-RANGE=PQ" in lines["180p_av1"] and "M.10," in lines["180p_av1"]


KID, KEY = "00112233445566778899aabbccddeeff", "0123456789abcdef0123456789abcdef"


@pytest.mark.slow
def test_cenc_cbcs_segments_play_in_dash_js_with_the_clear_key_and_the_key_stays_secret(
    tmp_path, make_source, monkeypatch
):
    ladder = [LADDER[0], LADDER[2]]  # H.264 and AV1
    changes = {
        "ladder": ladder,
        "hls": CMAF | {"encryption": "cbcs"},
        "captions": {"enabled": False},
    }
    source = make_source(duration_s=4.0, width=320, height=180, fps=30)
    monkeypatch.delenv("MPEGFLOW_CENC_KEY", raising=False)
    with pytest.raises(MissingKey, match="set MPEGFLOW_CENC_KEY_ID and MPEGFLOW_CENC_KEY"):
        deployment_key()
    monkeypatch.setenv("MPEGFLOW_CENC_KEY_ID", KID)
    monkeypatch.setenv("MPEGFLOW_CENC_KEY", KEY)
    packages = []
    for n in (1, 2):  # the IV comes from the key id and the tracks: the same package twice
        with ran(tmp_path / f"p{n}", changes, source) as (project, instance):
            hls = latest(instance, "hls")
        packages.append(Path(project.settings.delivery_dir) / "clip" / "hls")
    assert tree_hashes(packages[0]) == tree_hashes(packages[1])
    assert hls["encryption"] == "cbcs (raw key)"
    argv = json.dumps(hls["provenance"]["argv"])
    assert KEY not in argv and f"key_id={KID}:key=<redacted>" in argv
    package = packages[0]
    assert not [p for p in package.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    mpd = (package / "manifest.mpd").read_text()
    assert (
        'value="cbcs"' in mpd and 'cenc:default_KID="00112233-4455-6677-8899-aabbccddeeff"' in mpd
    )
    init = (package / "180p" / "init.mp4").read_bytes()
    assert b"encv" in init and b"cbcs" in init  # an encrypted sample entry, scheme cbcs
    report = play("dash", package.parent, "hls/manifest.mpd", tmp_path, {"kid": KID, "key": KEY})
    assert played(report) == {("avc1", 180), ("av1", 180)}
