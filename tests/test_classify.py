"""Failure classification and output verification on real FFmpeg runs of a damaged/hostile corpus.

Every case runs through the real runner with both the FFmpeg on PATH (Debian's 5.1 here) and a
static 9.0 build, so the exit-status differences between the families are exercised, not assumed.
What a case expects follows the family of the build in use (`FFmpegBuild.family`, from its
`-version`), or what that binary says it can do; exit statuses asserted here were measured on
Debian's 5.1 (FFmpeg <= 6) and the static 9.0 (FFmpeg 7+).
"""

from __future__ import annotations

import errno
import http.server
import os
import signal
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import corpus  # tests/ is on sys.path (rootdir conftest, no package)
import pytest
from pipeline_helpers import processes_with

from mpegflow_dagster.media.build import FFmpegBuild, detect_build
from mpegflow_dagster.media.classify import (
    STDERR_RULES,
    Classification,
    _from_stderr,
    classify,
    classify_exception,
)
from mpegflow_dagster.media.probe import ProbeError, parse_probe, probe
from mpegflow_dagster.media.runner import FFmpegFailed, RunLimits, RunResult, run_ffmpeg
from mpegflow_dagster.media.verify import (
    STDERR_SIGNATURES,
    OutputRejected,
    stderr_problems,
    verify_output,
)
from mpegflow_dagster.stages.toolkit import MediaRejected


def _static_9() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(params=["system", "static"])
def build(request: pytest.FixtureRequest) -> FFmpegBuild:
    """The FFmpeg on PATH (the one the pipeline runs by default, whatever its version) and the
    static 9.0 build of the imageio-ffmpeg dev dependency."""
    if request.param == "system":
        return detect_build("ffmpeg")
    found = detect_build(_static_9())
    assert found.family == "ffmpeg7+"
    return found


def _decodes(build: FFmpegBuild, codec: str) -> bool:
    listing = subprocess.run(
        [build.path, "-hide_banner", "-decoders"], capture_output=True, text=True, check=True
    )
    return any(line.split()[1:2] == [codec] for line in listing.stdout.splitlines())


@pytest.fixture(scope="module")
def clip(make_source) -> Path:
    """A 2 s faststart clip, made once for the module: tests read it and write elsewhere."""
    source = make_source("clip", duration_s=2.0, width=320, height=240)
    return corpus.faststart(source, source.parent)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    """A local HTTP server answering 404 or 503 depending on the path."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404 if "404" in self.path else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _fail(
    build: FFmpegBuild, args: list[str], **kwargs: object
) -> tuple[RunResult, Classification]:
    with pytest.raises(FFmpegFailed) as err:
        run_ffmpeg(args, ffmpeg=build.path, **kwargs)
    result = err.value.result
    return result, classify(result, family=build.family)


def _in(path: Path) -> list[str]:
    return ["-protocol_whitelist", "file", "-i", f"file:{path}"]


def _x264(out: Path) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-f", "mp4", f"file:{out}"]


NULL = ["-f", "null", "-"]

# name -> (argv maker(tmp, clip, http_base), class, reason, {family: measured exit status}).
Maker = Callable[[Path, Path, str], list[str]]
CASES: dict[str, tuple[Maker, str, str, dict[str, int]]] = {
    "missing": (
        lambda d, c, h: _in(corpus.missing(d)) + NULL,
        "permanent",
        "input.not_found",
        {"ffmpeg<=6": 1, "ffmpeg7+": 254},
    ),
    "zero_byte": (
        lambda d, c, h: _in(corpus.zero_byte(d)) + NULL,
        "permanent",
        "input.invalid_data",
        {"ffmpeg<=6": 1, "ffmpeg7+": 183},
    ),
    "random_bytes": (
        lambda d, c, h: _in(corpus.random_bytes(d)) + NULL,
        "permanent",
        "input.invalid_data",
        {"ffmpeg<=6": 1, "ffmpeg7+": 183},
    ),
    "audio_only": (
        lambda d, c, h: _in(corpus.audio_only(d)) + ["-map", "0:v:0"] + _x264(d / "o.mp4"),
        "permanent",
        "input.no_video_stream",
        {"ffmpeg<=6": 1, "ffmpeg7+": 234},
    ),
    "pixel_bomb": (
        lambda d, c, h: _in(corpus.pixel_bomb_png(d)) + NULL,
        "permanent",
        "input.too_large",
        {"ffmpeg<=6": 1, "ffmpeg7+": 69},
    ),
    "unknown_encoder": (
        lambda d, c, h: _in(c) + ["-c:v", "libfoo264", "-f", "mp4", f"file:{d / 'o.mp4'}"],
        "permanent",
        "config.unknown_encoder",
        {"ffmpeg<=6": 1, "ffmpeg7+": 8},
    ),
    "invalid_preset": (
        lambda d, c, h: (
            _in(c) + ["-c:v", "libx264", "-preset", "warpspeed", "-f", "mp4", f"file:{d / 'o.mp4'}"]
        ),
        "permanent",
        "config.invalid_option",
        {"ffmpeg<=6": 1, "ffmpeg7+": 234},
    ),
    "invalid_bitrate": (
        lambda d, c, h: (
            _in(c) + ["-c:v", "libx264", "-b:v", "lots", "-f", "mp4", f"file:{d / 'o.mp4'}"]
        ),
        "permanent",
        "config.invalid_option",
        {"ffmpeg<=6": 1, "ffmpeg7+": 234},
    ),
    "odd_dimensions": (
        lambda d, c, h: _in(c) + ["-vf", "scale=321:241,format=yuv420p"] + _x264(d / "o.mp4"),
        "permanent",
        "config.encoder_rejected",
        {"ffmpeg<=6": 1, "ffmpeg7+": 187},
    ),
    "hls_reads_local_file": (
        lambda d, c, h: _in(corpus.hls_reading_local_file(d)) + NULL,
        "security",
        "security.playlist_input",
        {"ffmpeg<=6": 1, "ffmpeg7+": 183},
    ),
    "hls_disguised_as_mp4": (
        lambda d, c, h: _in(corpus.hls_disguised_as_mp4(d)) + NULL,
        "security",
        "security.playlist_input",
        {"ffmpeg<=6": 1, "ffmpeg7+": 183},
    ),
    "ffconcat_disguised_as_mp4": (
        lambda d, c, h: _in(corpus.ffconcat_disguised_as_mp4(d)) + NULL,
        "security",
        "security.playlist_input",
        {"ffmpeg<=6": 1, "ffmpeg7+": 255},
    ),
    "playlist_vs_format_whitelist": (
        lambda d, c, h: (
            ["-format_whitelist", "mov,mp4,m4a,3gp,3g2,mj2"] + _in(corpus.hls_playlist(d, c)) + NULL
        ),
        "security",
        "security.forbidden_format",
        {"ffmpeg<=6": 1, "ffmpeg7+": 234},
    ),
    "forbidden_protocol": (
        lambda d, c, h: ["-protocol_whitelist", "file", "-i", f"{h}/404.mp4"] + NULL,
        "security",
        "security.forbidden_protocol",
        {"ffmpeg<=6": 1, "ffmpeg7+": 234},
    ),
    "connection_refused": (
        lambda d, c, h: ["-i", f"http://127.0.0.1:{corpus.free_tcp_port()}/x.mp4"] + NULL,
        "transient",
        "network.refused",
        {"ffmpeg<=6": 1, "ffmpeg7+": 145},
    ),
    "http_404": (
        lambda d, c, h: ["-i", f"{h}/404.mp4"] + NULL,
        "permanent",
        "network.http_error",
        {"ffmpeg<=6": 1, "ffmpeg7+": 8},
    ),
    "http_503": (
        lambda d, c, h: ["-i", f"{h}/503.mp4"] + NULL,
        "transient",
        "network.http_error",
        {"ffmpeg<=6": 1, "ffmpeg7+": 8},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_corpus_failures_are_classified(build, clip, tmp_path, http_base, case):
    make_args, failure_class, reason, exit_codes = CASES[case]
    result, got = _fail(build, make_args(tmp_path, clip, http_base))
    assert (got.failure_class, got.reason) == (failure_class, reason), got.message
    assert result.returncode == got.exit_code == exit_codes[build.family]
    assert got.signal is None and got.message


def test_read_timeout_is_transient(build):
    listener = corpus.silent_listener()
    try:
        port = listener.getsockname()[1]
        result, got = _fail(
            build, ["-rw_timeout", "500000", "-i", f"http://127.0.0.1:{port}/x.mp4"] + NULL
        )
    finally:
        listener.close()
    assert (got.failure_class, got.reason) == ("transient", "network.timeout")
    assert result.returncode == {"ffmpeg<=6": 1, "ffmpeg7+": 146}[build.family]


def test_unwritable_output_directory(build, clip, tmp_path):
    target = corpus.unwritable_dir(tmp_path)
    if target is None:
        pytest.skip("no directory here refuses writes to this user")
    result, got = _fail(build, _in(clip) + ["-c", "copy", "-f", "mp4", f"file:{target / 'o.mp4'}"])
    assert (got.failure_class, got.reason) == ("permanent", "io.permission_denied")
    assert result.returncode == {"ffmpeg<=6": 1, "ffmpeg7+": 243}[build.family]


def test_unmatched_stderr_falls_back_to_the_exit_status(build):
    # No stderr rule knows a filter-size failure: 5.1's exit 1 says nothing (unknown, retried a
    # bounded number of times); 9.0's EINVAL (234) makes it permanent.
    result, got = _fail(
        build,
        ["-f", "lavfi", "-i", "testsrc2=size=320x240:duration=1", "-vf", "crop=4000:4000"] + NULL,
    )
    expected = {
        "ffmpeg<=6": ("transient", "unknown"),
        "ffmpeg7+": ("permanent", "config.invalid_option"),
    }
    assert (got.failure_class, got.reason) == expected[build.family]


def test_disk_full(build, clip):
    # 5.1 exits 0 when the trailer cannot be written; only the stderr check catches it. 9.0 fails
    # with -ENOSPC (228). Either way the disk-full run is not taken for a success.
    args = _in(clip) + ["-c", "copy", "-f", "mpegts", "file:/dev/full"]
    try:
        result = run_ffmpeg(args, ffmpeg=build.path)
    except FFmpegFailed as failed:
        got = classify(failed.result, family=build.family)
        assert (got.failure_class, got.reason) == ("resource", "resource.disk_full"), got.message
        if build.family == "ffmpeg7+":
            assert failed.result.returncode == 256 - errno.ENOSPC
    else:
        assert build.family == "ffmpeg<=6", "only FFmpeg <= 6 exits 0 on a full disk"
        assert any(
            "Error writing trailer" in p for p in stderr_problems(result.messages, "tolerant")
        )


def test_codec_this_build_cannot_decode(build, tmp_path):
    vvc = corpus.vvc_clip(tmp_path, _static_9())  # 5.1 has no VVC decoder, 9.0 has one
    if _decodes(build, "vvc"):
        assert run_ffmpeg(_in(vvc) + NULL, ffmpeg=build.path).ok
    else:
        _, got = _fail(build, _in(vvc) + NULL)
        assert (got.failure_class, got.reason) == ("permanent", "input.unsupported_codec")


def test_playlists_pass_a_file_only_protocol_whitelist(build, clip, tmp_path):
    # Why security.playlist_input exists: `-protocol_whitelist file` does not stop a playlist or
    # concat list from pulling in other local files; only a format whitelist does.
    for playlist in (
        ["-i", f"file:{corpus.hls_playlist(tmp_path, clip)}"],
        ["-f", "concat", "-safe", "0", "-i", f"file:{corpus.concat_list(tmp_path, clip)}"],
    ):
        result = run_ffmpeg(["-protocol_whitelist", "file", *playlist, *NULL], ffmpeg=build.path)
        assert (
            result.ok and result.last_progress is not None and result.last_progress.out_time_s > 1.5
        )


def _run_and_signal(build: FFmpegBuild, tmp_path: Path, sig: int) -> RunResult:
    """Start a real-time encode, send `sig` to the FFmpeg child once it reports progress."""
    marker = str(tmp_path / "signalled.mp4")
    started = threading.Event()
    failure: list[FFmpegFailed] = []

    def target() -> None:
        try:
            run_ffmpeg(
                [
                    "-stats_period",
                    "0.1",
                    "-re",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc2=size=320x240:rate=25:duration=30",
                ]
                + _x264(Path(marker)),
                ffmpeg=build.path,
                on_progress=lambda p: started.set(),
            )
        except FFmpegFailed as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(15)
    pids = processes_with(marker)
    assert pids
    os.kill(pids[0], sig)
    thread.join(30)
    assert failure, "the run should have failed"
    return failure[0].result


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_signals_we_did_not_send_are_transient(build, tmp_path, sig):
    result = _run_and_signal(build, tmp_path, sig)
    got = classify(result, family=build.family)
    assert (got.failure_class, got.reason) == ("transient", "process.killed"), got.message
    if sig == signal.SIGKILL:
        assert result.returncode == -9 and got.signal == 9 and got.exit_code is None
    else:  # FFmpeg traps SIGTERM, finalizes and exits 255 (both builds)
        assert result.returncode == 255 and got.exit_code == 255 and got.signal is None
    cancelled = classify(result, family=build.family, we_signalled=True)
    assert (cancelled.failure_class, cancelled.reason) == ("cancelled", "process.cancelled")


@pytest.mark.slow  # real-time encodes until the watchdog stops them: 1-4 s a case
@pytest.mark.parametrize(
    "source, limits, reason",
    [
        # -re at 0.5 fps: progress reports keep coming but out_time only moves every 2 s
        # (9.0 then answers SIGTERM only at the next frame).
        (
            "testsrc2=size=320x240:rate=0.5:duration=60",
            RunLimits(stall_s=1.0, kill_grace_s=5),
            "process.stalled",
        ),
        (
            "testsrc2=size=320x240:rate=25:duration=60",
            RunLimits(timeout_s=1.0, kill_grace_s=5),
            "process.watchdog_timeout",
        ),
    ],
    ids=["stall", "timeout"],
)
def test_watchdog_stops_are_transient(build, tmp_path, source, limits, reason):
    result, got = _fail(
        build, ["-re", "-f", "lavfi", "-i", source] + _x264(tmp_path / "o.mp4"), limits=limits
    )
    assert result.stopped_by in ("stall", "timeout")
    assert (got.failure_class, got.reason) == ("transient", reason)


def test_probe_explains_an_ambiguous_kill(build, clip, tmp_path):
    result = _run_and_signal(build, tmp_path, signal.SIGKILL)
    audio = probe(corpus.audio_only(tmp_path))
    bomb = parse_probe(
        {
            "format": {"format_name": "png_pipe", "duration": "0.04", "size": "100"},
            "streams": [{"index": 0, "codec_type": "video", "width": 40000, "height": 40000}],
        }
    )
    normal = probe(clip)
    assert classify(result, family=build.family, probe=bomb).reason == "input.too_large"
    assert classify(result, family=build.family, probe=audio).reason == "input.no_video_stream"
    assert classify(result, family=build.family, probe=normal).reason == "process.killed"


# --- exit 0 is not success -------------------------------------------------------------------


def _encode(build: FFmpegBuild, src: Path, out: Path, *extra: str) -> RunResult:
    return run_ffmpeg(_in(src) + list(extra) + ["-c:a", "aac"] + _x264(out), ffmpeg=build.path)


def test_half_a_file_encodes_with_exit_0_but_is_rejected(build, clip, tmp_path):
    result = _encode(build, corpus.truncated(clip, tmp_path), tmp_path / "o.mp4")
    assert result.ok
    out, src = probe(tmp_path / "o.mp4"), probe(clip)
    for policy in ("strict", "tolerant"):
        problems = verify_output(
            out, src, expect_audio=True, policy=policy, messages=result.messages
        )
        assert any("lasts" in p for p in problems), problems


def test_concealed_corruption_fails_strict_only(build, clip, tmp_path):
    result = _encode(build, corpus.bit_flipped(clip, tmp_path), tmp_path / "o.mp4")
    assert result.ok
    out, src = probe(tmp_path / "o.mp4"), probe(clip)
    strict = verify_output(out, src, expect_audio=True, policy="strict", messages=result.messages)
    assert strict and all(p.startswith("stderr shows damage") for p in strict), strict
    assert (
        verify_output(out, src, expect_audio=True, policy="tolerant", messages=result.messages)
        == []
    )


def test_clean_encode_passes_and_missing_audio_is_caught(build, clip, tmp_path):
    result = _encode(build, clip, tmp_path / "o.mp4")
    src = probe(clip)
    out = probe(tmp_path / "o.mp4")
    assert (
        verify_output(out, src, expect_audio=True, policy="strict", messages=result.messages) == []
    )
    silent = _encode(build, clip, tmp_path / "silent.mp4", "-an")
    out = probe(tmp_path / "silent.mp4")
    problems = verify_output(out, src, expect_audio=True, policy="strict", messages=silent.messages)
    assert problems == ["source has audio but the output has none"]
    assert (
        verify_output(out, src, expect_audio=False, policy="strict", messages=silent.messages) == []
    )


def test_audio_only_output_has_no_video(tmp_path):
    audio = probe(corpus.audio_only(tmp_path))
    problems = verify_output(audio, audio, expect_audio=True, policy="tolerant", messages="")
    assert problems == ["output has no video stream"]


# --- exceptions stages raise ------------------------------------------------------------------


def test_classify_exception(tmp_path):
    with pytest.raises(OSError) as disk:
        with open("/dev/full", "wb") as f:
            f.write(b"x")
    assert disk.value.errno == errno.ENOSPC
    with pytest.raises(ProbeError) as bad_probe:
        probe(corpus.zero_byte(tmp_path))
    with pytest.raises(FFmpegFailed) as failed:
        run_ffmpeg(_in(corpus.missing(tmp_path)) + NULL)
    expected = [
        (disk.value, "resource", "resource.disk_full"),
        (MemoryError(), "resource", "resource.out_of_memory"),
        (bad_probe.value, "permanent", "input.invalid_data"),
        (MediaRejected("no video"), "permanent", "input.rejected"),
        (OutputRejected(["output is empty"]), "permanent", "output.verification_failed"),
        (PermissionError(errno.EACCES, "denied"), "permanent", "io.permission_denied"),
        (failed.value, "permanent", "input.not_found"),
        (ValueError("surprise"), "transient", "unknown"),
    ]
    for exc, failure_class, reason in expected:
        got = classify_exception(exc, family="ffmpeg<=6")
        assert (got.failure_class, got.reason) == (failure_class, reason), exc


def test_watchdog_and_cancel_take_precedence_over_stderr():
    # A run we stopped prints errors while dying; those must not decide the class.
    dying = RunResult(
        argv=["ffmpeg"], returncode=255, stderr_tail="No space left on device", wall_s=1, cpu_s=1
    )
    assert classify(dying, family="ffmpeg<=6").reason == "resource.disk_full"
    assert (
        classify(replace(dying, stopped_by="stall"), family="ffmpeg<=6").reason == "process.stalled"
    )
    assert classify(dying, family="ffmpeg<=6", we_signalled=True).failure_class == "cancelled"
    # 143 is EHOSTUNREACH in 7+, not 128+SIGTERM.
    unreachable = replace(dying, returncode=143, stderr_tail="")
    assert classify(unreachable, family="ffmpeg7+").reason == "network.unreachable"
    assert classify(unreachable, family="ffmpeg<=6").reason == "unknown"
    crashed = replace(dying, returncode=-signal.SIGSEGV, stderr_tail="")
    assert classify(crashed, family="ffmpeg7+").failure_class == "security"


# --- echoes are not evidence -----------------------------------------------------------------

# One line FFmpeg could print for each stderr rule, in rule order, and for each damage signature.
RULE_SAMPLES = [
    "Exiting normally, received signal 15",
    "Unsafe file name",
    "Format not on whitelist",
    "Protocol 'http' not on whitelist",
    "No space left on device",
    "Cannot allocate memory",
    "Picture size 99999x99999 is invalid",
    "does not contain any video stream",
    "Stream map '0:s' matches no streams",
    "Decoder (codec vvc) not found",
    "Unknown encoder 'libfoo'",
    "No such filter",
    "Error while opening encoder",
    "HTTP error 429 Too Many Requests",
    "HTTP error 404 Not Found",
    "HTTP error 503 Service Unavailable",
    "Connection timed out",
    "Connection refused",
    "Network is unreachable",
    "Permission denied",
    "No such file or directory",
    "Invalid data found when processing input",
]
DAMAGE_SAMPLES = [
    "moov atom not found",
    "partial file",
    "Error writing trailer",
    "Invalid NAL unit",
    "Error while decoding",
    "Error splitting the input into NAL units",
    "corrupt",
    "concealing",
]


def test_every_rule_has_a_hostile_sample():
    assert len(RULE_SAMPLES) == len(STDERR_RULES)
    for rule, sample in zip(STDERR_RULES, RULE_SAMPLES, strict=True):
        assert rule.pattern.search(sample), (rule.reason, sample)
    for pattern, _ in STDERR_SIGNATURES:
        assert any(pattern.search(s) for s in [*DAMAGE_SAMPLES, *RULE_SAMPLES]), pattern.pattern


def _hostile_dir(base: Path) -> Path:
    """A directory whose path holds every sample, one per component (a video's name reaches
    paths through the partition key; a deployment's directories are anybody's choice)."""
    hostile = base.joinpath(*RULE_SAMPLES, *DAMAGE_SAMPLES)
    hostile.mkdir(parents=True)
    return hostile


def _hostile_clip(build: FFmpegBuild, directory: Path) -> Path:
    """A clean 3 s clip with audio named after damage, whose title tag lists every sample."""
    clip = directory / "anti-corruption-talk.mp4"
    title = "\n".join([*RULE_SAMPLES, *DAMAGE_SAMPLES])
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=3",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=3",
            "-metadata",
            f"title={title}",
            "-c:v",
            "libx264",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-f",
            "mp4",
            f"file:{clip}",
        ],
        ffmpeg=build.path,
    )
    return clip


@pytest.mark.slow  # six FFmpeg runs (x264, subtitles burn-in) on a fresh clip: about 2 s a build
def test_our_own_commands_on_hostile_names_say_nothing_a_rule_reads(build, tmp_path):
    """Each command the pipeline runs (chunk encode with thumbnails, audio, ffconcat join, HLS,
    sprite, captions burn-in), on real files whose paths and tags echo every rule: the raw
    stderr matches rules, what FFmpeg said does not, and verification finds nothing."""
    from fractions import Fraction

    from mpegflow_dagster.media import commands
    from mpegflow_dagster.media.chunking import Span
    from mpegflow_dagster.media.synth import write_srt
    from mpegflow_dagster.project import Project
    from mpegflow_dagster.stages.encode import video_output

    work = _hostile_dir(tmp_path)
    src = _hostile_clip(build, work)
    spec = Project.load(Path(__file__).resolve().parents[1]).spec()
    enc = video_output(spec, spec.ladder[0], probe(src))
    frames = work / "frames"
    frames.mkdir()
    chunk, audio, joined = work / "240p-0001.mp4", work / "audio-240p.m4a", work / "240p.mp4"
    listing = work / "it's 240p.ffconcat"  # a quote in the listing's own path, too
    listing.write_text(commands.concat_listing([chunk]))
    (work / "hls").mkdir()
    srt = write_srt(work / "captions.srt", 3.0)
    runs = [
        run_ffmpeg(
            commands.encode_ladder_args(
                src,
                {chunk: enc},
                threads=1,
                span=Span(Fraction(0), Fraction(3)),
                thumbnails=(frames, commands.ThumbnailOutput(1, 160, 4)),
            ),
            ffmpeg=build.path,
        ),
        run_ffmpeg(commands.audio_args(src, {audio: enc.audio}), ffmpeg=build.path),
        run_ffmpeg(commands.join_args(listing, audio, joined), ffmpeg=build.path),
        run_ffmpeg(
            commands.hls_variant_args(joined, work / "hls", segment_s=2, segment_type="mpegts"),
            ffmpeg=build.path,
        ),
        run_ffmpeg(
            commands.sprite_args(
                frames, work / "sprite.jpg", columns=3, rows=1, tile_width=80, quality=4
            ),
            ffmpeg=build.path,
        ),
        run_ffmpeg(
            commands.encode_rendition_args(
                src, work / "captioned.mp4", enc, threads=1, subtitles=srt.name
            ),
            ffmpeg=build.path,
            cwd=work,
        ),
    ]
    for run in runs:
        assert _from_stderr(run.stderr_tail) is not None, run.stderr_tail  # the echoes are there
        assert _from_stderr(run.messages) is None, run.messages
        assert stderr_problems(run.messages, "strict") == [], run.messages
    assert (
        verify_output(
            probe(joined),
            probe(src),
            expect_audio=True,
            policy="strict",
            messages="\n".join(r.messages for r in runs[:3]),
        )
        == []
    )


def test_a_disk_full_join_is_classified_by_the_error_not_its_banner(build, tmp_path):
    """The ffconcat join writing to a full disk (/dev/full): its banner says `Input #0, concat`,
    its paths say `Unsafe file name`; the error says disk full."""
    from mpegflow_dagster.media import commands

    work = _hostile_dir(tmp_path)
    clip = _hostile_clip(build, work)
    listing = work / "240p.ffconcat"
    listing.write_text(commands.concat_listing([clip]))
    result, got = _fail(build, commands.join_args(listing, None, Path("/dev/full")))
    assert "Input #0, concat, from" in result.stderr_tail
    assert (got.failure_class, got.reason) == ("resource", "resource.disk_full"), got.message
    assert str(work) not in got.message
