"""Classify a failed FFmpeg run (or a stage exception) so callers know whether to retry.

FFmpeg's exit status says little: FFmpeg <= 6 exits 1 for almost every failure, FFmpeg 7+
exits with the negative AVERROR truncated to 8 bits, where several errors share a value
(8 = every "not found" and every HTTP error; 187 = EOF or "external library"; 255 = EPERM or
"received a signal"). So what FFmpeg said decides first, through one ordered table of patterns,
and the exit status per build family is only the fallback. The patterns read `RunResult.messages`:
the stderr tail without banners and file names (see `messages`), so neither our own commands'
banners nor a user's file name or metadata can pose as a diagnostic.

Classes: `transient` (retry with backoff), `resource` (retry later or elsewhere, after freeing
disk/memory), `permanent` (never retry: the input or the configuration is wrong), `security`
(never retry, quarantine the input), `cancelled` (we stopped it on purpose).
"""

from __future__ import annotations

import errno
import re
import signal
from dataclasses import dataclass
from typing import Literal, Optional

from .build import FFmpegNotFound
from .probe import MediaInfo, ProbeError
from .runner import FFmpegFailed, RunResult
from .verify import OutputRejected

FailureClass = Literal["transient", "permanent", "resource", "security", "cancelled"]

# More pixels than this in a source is treated as a decompression ("pixel") bomb. 8192x8192
# leaves room for 8K (7680x4320) and rejects the 40000x40000 headers hostile files declare.
MAX_SOURCE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class Classification:
    failure_class: FailureClass
    reason: (
        str  # stable dotted code, e.g. "input.invalid_data"; dashboards and retry policy key on it
    )
    message: str  # for humans: what happened, with the stderr line that proved it when there is one
    exit_code: Optional[int] = None
    signal: Optional[int] = None


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    failure_class: FailureClass
    reason: str
    message: str


def _rule(pattern: str, failure_class: FailureClass, reason: str, message: str) -> _Rule:
    return _Rule(re.compile(pattern, re.MULTILINE), failure_class, reason, message)


# Ordered: the first rule matching anywhere in what FFmpeg said wins. Specific causes come before
# the generic lines FFmpeg prints after them (a hostile playlist also prints "Invalid data
# found"; a bad x264 preset also prints "Error while opening encoder").
STDERR_RULES: tuple[_Rule, ...] = (
    # FFmpeg itself caught a SIGTERM/SIGINT it did not expect (5.1 then exits 255 or 123).
    _rule(
        r"Exiting normally, received signal \d+|Received > 3 system signals",
        "transient",
        "process.killed",
        "FFmpeg was interrupted by a signal we did not send",
    ),
    # Security: playlist/list demuxers read other files or URLs named inside the input.
    _rule(
        r"Unsafe file name|not in allowed_(?:segment_)?extensions|Not detecting m3u8/hls with non standard extension"
        r"|^\[hls @ [^\]]*\] (?:Failed to open segment|Error when loading first segment)",
        "security",
        "security.playlist_input",
        "the input is a playlist or file list that references other files",
    ),
    _rule(
        r"Format not on whitelist",
        "security",
        "security.forbidden_format",
        "the input's format is not on the allowed format list",
    ),
    _rule(
        r"Protocol '[^']*' not on whitelist",
        "security",
        "security.forbidden_protocol",
        "the input asked for a protocol that is not allowed",
    ),
    # Resources.
    _rule(
        r"No space left on device|Disk quota exceeded",
        "resource",
        "resource.disk_full",
        "the disk is full",
    ),
    _rule(
        r"Cannot allocate memory|Out of memory",
        "resource",
        "resource.out_of_memory",
        "FFmpeg ran out of memory",
    ),
    # The input.
    _rule(
        r"Picture size \d+x\d+ (?:is invalid|exceeds specified max pixel count)",
        "permanent",
        "input.too_large",
        "the input declares a picture size too large to decode (pixel bomb?)",
    ),
    # 9.0 prints an empty "Stream map ''", then the specifier in "Failed to set value".
    _rule(
        r"Stream map '\d*:?v(?::\d+)?\??' matches no streams|Failed to set value '\d*:?v(?::\d+)?\??' for option 'map'"
        r"|does not contain any video stream",
        "permanent",
        "input.no_video_stream",
        "the input has no video stream",
    ),
    _rule(
        r"Stream map '[^']*' matches no streams",
        "permanent",
        "input.missing_stream",
        "the input lacks a stream the command maps",
    ),
    _rule(
        r"Decoder \(codec [^)]*\) not found|Unsupported codec|: unknown codec",
        "permanent",
        "input.unsupported_codec",
        "this FFmpeg build cannot decode the input's codec",
    ),
    # The configuration (our argv or preset).
    _rule(
        r"Unknown encoder '",
        "permanent",
        "config.unknown_encoder",
        "the encoder is not in this FFmpeg build",
    ),
    _rule(
        r"Error setting option|Unable to parse (?:\"\w+\" )?option value|invalid preset|Error setting preset"
        r"|Unrecognized option|Option \S+ not found|Failed to set value|No such filter",
        "permanent",
        "config.invalid_option",
        "an option or option value is invalid",
    ),
    # Not "Could not open encoder before EOF": 9.0 prints it after any upstream (filter) failure.
    _rule(
        r"(?:width|height) not divisible by 2|Error while opening encoder",
        "permanent",
        "config.encoder_rejected",
        "the encoder rejected its parameters (e.g. odd dimensions)",
    ),
    # Network.
    _rule(
        r"HTTP error (?:408|429)",
        "transient",
        "network.http_error",
        "the server asked us to come back later",
    ),
    _rule(r"HTTP error 4\d\d", "permanent", "network.http_error", "the server refused the request"),
    _rule(
        r"HTTP error 5\d\d|Server returned 5XX",
        "transient",
        "network.http_error",
        "the server failed",
    ),
    _rule(r"[Tt]imed out", "transient", "network.timeout", "a network operation timed out"),
    _rule(r"Connection refused", "transient", "network.refused", "the connection was refused"),
    _rule(
        r"No route to host|Network is unreachable|Connection reset by peer|Temporary failure in name resolution"
        r"|Name or service not known",
        "transient",
        "network.unreachable",
        "the network or host is unreachable",
    ),
    # Files.
    _rule(
        r"Permission denied|Read-only file system|Operation not permitted",
        "permanent",
        "io.permission_denied",
        "a file or directory is not readable or writable",
    ),
    _rule(r"No such file or directory", "permanent", "input.not_found", "a file does not exist"),
    # Generic damage last: many specific failures above also print these.
    _rule(
        r"Invalid data found when processing input|moov atom not found|Invalid NAL unit|EBML header parsing failed"
        r"|Decode error rate \S+ exceeds",
        "permanent",
        "input.invalid_data",
        "the input is damaged or not media",
    ),
)

_Outcome = tuple[FailureClass, str, str]

# Fallback by exit status when no stderr rule matched. Values measured on Debian 5.1 and a
# 9.0 static build; ambiguous 7+ values (8, 255) are deliberately absent.
_EVERY_FAMILY: dict[int, _Outcome] = {
    69: ("permanent", "input.invalid_data", "the decode-error rate exceeded the limit"),
    123: ("transient", "process.killed", "FFmpeg received more than 3 signals"),
}
EXIT_CODES: dict[str, dict[int, _Outcome]] = {
    "ffmpeg<=6": {
        **_EVERY_FAMILY,
        255: ("transient", "process.killed", "FFmpeg stopped after receiving a signal"),
    },
    "ffmpeg7+": {
        **_EVERY_FAMILY,
        183: ("permanent", "input.invalid_data", "invalid data (AVERROR_INVALIDDATA)"),
        234: ("permanent", "config.invalid_option", "invalid argument (EINVAL)"),
        254: ("permanent", "input.not_found", "no such file or directory (ENOENT)"),
        243: ("permanent", "io.permission_denied", "permission denied (EACCES)"),
        228: ("resource", "resource.disk_full", "no space left on device (ENOSPC)"),
        244: ("resource", "resource.out_of_memory", "cannot allocate memory (ENOMEM)"),
        145: ("transient", "network.refused", "connection refused (ECONNREFUSED)"),
        146: ("transient", "network.timeout", "connection timed out (ETIMEDOUT)"),
        143: ("transient", "network.unreachable", "no route to host (EHOSTUNREACH), not SIGTERM"),
        187: (
            "permanent",
            "config.encoder_rejected",
            "an external library (e.g. libx264) failed, or EOF",
        ),
    },
}

# Deaths by signal that we did not send. SIGKILL is usually the kernel OOM killer or an
# orchestrator evicting the pod: worth a retry. A crash on an input reproduces, and decoder
# memory errors are how hostile media attacks, so it is quarantined, not retried.
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}
_LIMIT_SIGNALS: dict[int, _Outcome] = {
    signal.SIGXCPU: (
        "resource",
        "resource.cpu_limit",
        "the CPU-time limit (RLIMIT_CPU) was reached",
    ),
    signal.SIGXFSZ: (
        "resource",
        "resource.disk_full",
        "the file-size limit (RLIMIT_FSIZE) was reached",
    ),
}

# Reasons a probe of the input can explain better than the run could (an OOM kill while
# decoding a 40000x40000 picture is the picture's fault, not the machine's).
_PROBE_REFINABLE = {
    "unknown",
    "process.killed",
    "resource.out_of_memory",
    "config.invalid_option",
    "input.missing_stream",
    "input.invalid_data",
}


def classify(
    result: RunResult, *, family: str, we_signalled: bool = False, probe: Optional[MediaInfo] = None
) -> Classification:
    """Classify a run that did not succeed. `family` is FFmpegBuild.family; `we_signalled` is
    True when the caller sent the signal to cancel; `probe` (of the input) refines ambiguous
    outcomes into input.too_large / input.no_video_stream."""
    code, sig = result.returncode, result.signal

    def make(failure_class: FailureClass, reason: str, message: str) -> Classification:
        return Classification(
            failure_class, reason, message, exit_code=None if sig else code, signal=sig
        )

    # Our own stops first: whatever FFmpeg printed while dying is a consequence.
    if result.stopped_by == "timeout":
        return make(
            "transient",
            "process.watchdog_timeout",
            "stopped by the watchdog: the run exceeded its time limit",
        )
    if result.stopped_by == "stall":
        return make(
            "transient", "process.stalled", "stopped by the watchdog: no progress for too long"
        )
    if we_signalled or result.stopped_by == "cancelled":
        return make("cancelled", "process.cancelled", "cancelled on request")
    found = (
        _from_signal(sig)
        if sig
        else (_from_stderr(result.messages) or EXIT_CODES.get(family, {}).get(code))
    )
    outcome: _Outcome = found or (
        "transient",
        "unknown",
        f"unrecognised failure (exit status {code})",
    )
    if probe is not None and outcome[1] in _PROBE_REFINABLE:
        outcome = _from_probe(probe) or outcome
    return make(*outcome)


def classify_exception(
    exc: BaseException,
    *,
    family: str = "",
    we_signalled: bool = False,
    probe: Optional[MediaInfo] = None,
) -> Classification:
    """Classify any exception a stage raised; FFmpegFailed is delegated to `classify`."""
    if isinstance(exc, FFmpegFailed):
        return classify(exc.result, family=family, we_signalled=we_signalled, probe=probe)
    if isinstance(exc, OutputRejected):
        return Classification("permanent", "output.verification_failed", str(exc))
    if isinstance(exc, ProbeError):
        return Classification("permanent", "input.invalid_data", str(exc))
    # Exceptions that already know their class (e.g. stages.MediaRejected) say so themselves.
    known_class, known_reason = getattr(exc, "failure_class", None), getattr(exc, "reason", None)
    if known_class in (
        "transient",
        "permanent",
        "resource",
        "security",
        "cancelled",
    ) and isinstance(known_reason, str):
        return Classification(known_class, known_reason, str(exc))
    if isinstance(exc, FFmpegNotFound):
        return Classification("permanent", "config.ffmpeg_not_found", str(exc))
    if isinstance(exc, MemoryError):
        return Classification("resource", "resource.out_of_memory", f"out of memory: {exc}")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return Classification("resource", "resource.disk_full", str(exc))
        if exc.errno == errno.ENOMEM:
            return Classification("resource", "resource.out_of_memory", str(exc))
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return Classification("permanent", "io.permission_denied", str(exc))
    return Classification("transient", "unknown", f"{type(exc).__name__}: {exc}")


def _from_stderr(messages: str) -> Optional[_Outcome]:
    """The first rule matching what FFmpeg said (`RunResult.messages`, never the raw tail)."""
    for rule in STDERR_RULES:
        m = rule.pattern.search(messages)
        if m:
            line = messages[messages.rfind("\n", 0, m.start()) + 1 :].split("\n", 1)[0].strip()
            return rule.failure_class, rule.reason, f"{rule.message}: {line}"
    return None


def _from_signal(sig: int) -> _Outcome:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    if sig in _CRASH_SIGNALS:
        return "security", "process.crashed", f"FFmpeg crashed ({name}): quarantine the input"
    if sig in _LIMIT_SIGNALS:
        return _LIMIT_SIGNALS[sig]
    hint = " (often the kernel OOM killer)" if sig == signal.SIGKILL else ""
    return (
        "transient",
        "process.killed",
        f"FFmpeg was killed by {name}, which we did not send{hint}",
    )


def _from_probe(info: MediaInfo) -> Optional[_Outcome]:
    video = info.video
    if video is None:
        return "permanent", "input.no_video_stream", "the input has no video stream"
    pixels = (video.width or 0) * (video.height or 0)
    if pixels > MAX_SOURCE_PIXELS:
        return (
            "permanent",
            "input.too_large",
            f"the input is {video.width}x{video.height}, over the pixel limit",
        )
    return None
