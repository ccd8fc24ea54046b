"""CMAF packaging with Shaka Packager: one set of fMP4 segments per track (each rendition's video,
each distinct audio apart), and a static DASH MPD over them; the HLS media playlists over the
same segments come with it, the multivariant playlist is ours (`hls.master_playlist`: honest
BANDWIDTH, each rung with the audio it was encoded with).

Why Shaka Packager, not FFmpeg's dash muxer: it is the field's reference packager, it writes
CMAF segments and both manifests in one run over all renditions (FFmpeg's would need them all as
inputs of one process and writes HLS master CODECS of its own), and it can encrypt them with CENC
`cbcs`, which FFmpeg 5.1's MP4 muxer cannot (`cenc-aes-ctr` only). Its static Linux binary comes
in the npm package `shaka-packager` (`make packager`). No Dagster here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..storage import sha256_file
from .runner import RunResult

DASH_MANIFEST = "manifest.mpd"
PACKAGER_VERSION = "3.4.2"  # the npm package `make packager` installs
_BUNDLED = Path("shaka") / "node_modules" / "shaka-packager" / "bin" / "packager-linux-x64"


class PackagerNotFound(RuntimeError):
    failure_class = "permanent"
    reason = "config.packager_not_found"


class PackagerFailed(RuntimeError):
    """Shaka Packager exited non-zero: the renditions it was given did not package."""

    failure_class = "permanent"
    reason = "package.packager_failed"

    def __init__(self, result: RunResult) -> None:
        self.result = result
        last = result.stderr_tail.strip().splitlines()[-1:] or ["(no stderr)"]
        super().__init__(f"packager failed: exit status {result.returncode}: {last[0]}")


def find_packager() -> str:
    """$MPEGFLOW_PACKAGER if set (and then only that), else `packager` on PATH, else the one
    `make packager` put in this virtualenv."""
    named = os.environ.get("MPEGFLOW_PACKAGER")
    candidates = [named] if named else [shutil.which("packager"), str(Path(sys.prefix) / _BUNDLED)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise PackagerNotFound(
        "Shaka Packager was not found"
        + (f" at MPEGFLOW_PACKAGER={named}" if named else "")
        + ": CMAF packaging (hls.segment_type: cmaf) needs it. Run `make packager` (npm package "
        f"shaka-packager {PACKAGER_VERSION} into .venv/shaka), or set MPEGFLOW_PACKAGER"
    )


@functools.lru_cache(maxsize=4)
def packager_version(packager: str) -> str:
    """As the binary says it, e.g. `v3.4.2-c819dea-release`: for provenance."""
    proc = subprocess.run([packager, "--version"], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip().rsplit(" ", 1)[-1]


SUBTITLES_GROUP = "subs"


@dataclass(frozen=True)
class Track:
    """One packaged track: `stream` ("video", "audio": of the MP4 `source`; "text": the WebVTT
    file `source`) into folder `name`."""

    name: str
    source: Path
    stream: str
    group: Optional[str] = None  # the HLS audio group an audio track belongs to
    language: Optional[str] = None  # BCP 47; None: the stream's own, if any
    default: bool = False  # an audio track a player picks first: DASH role "main"
    label: Optional[str] = None  # of a text track, unique in the package: its name in menus


class MissingKey(ValueError):
    failure_class = "permanent"
    reason = "config.missing_key"


_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_KEY_IN_ARGV = re.compile(r"(:key=)[0-9a-fA-F]{32}")


def deployment_key() -> tuple[str, str]:
    """(key id, key) for CENC from $MPEGFLOW_CENC_KEY_ID and $MPEGFLOW_CENC_KEY."""
    kid, key = os.environ.get("MPEGFLOW_CENC_KEY_ID", ""), os.environ.get("MPEGFLOW_CENC_KEY", "")
    if not (_HEX32.fullmatch(kid) and _HEX32.fullmatch(key)):
        raise MissingKey(
            "hls.encryption needs the deployment's raw key: set MPEGFLOW_CENC_KEY_ID and "
            "MPEGFLOW_CENC_KEY to 32 hex digits each (16 bytes; a DRM's key server hands out the "
            "same key id and key to licensed players)"
        )
    return kid.lower(), key.lower()


def content_iv(kid: str, sources: list[Path]) -> str:
    """A 16-byte IV (hex) that is the same for the same key id and tracks, and another for other
    content: Shaka's own is random, which would make every encrypted package a new one."""
    digest = hashlib.sha256(bytes.fromhex(kid))
    for source in sources:
        digest.update(bytes.fromhex(sha256_file(source)))
    return digest.hexdigest()[:32]


def encryption_args(scheme: str, kid: str, key: str, iv: str) -> list[str]:
    """Every track encrypted from its first segment with one raw key and the constant IV `iv`;
    the MPD and the media playlists say the scheme and the key id (`cenc:default_KID`), never
    the key."""
    return [
        "--enable_raw_key_encryption",
        "--keys",
        f"label=:key_id={kid}:key={key}",
        "--iv",
        iv,
        "--protection_scheme",
        scheme,
        "--clear_lead",
        "0",
        "--protection_systems",
        "CommonSystem",
    ]


def packager_args(tracks: list[Track], out_dir: Path, *, segment_s: int) -> list[str]:
    """Every track segmented on its keyframes (the renditions have them on common marks every
    gop_s, and segment_s is a multiple of it) into `<name>/init.mp4` and `<name>/NNNNN.m4s` with
    a media playlist `<name>/index.m3u8` (a text track: `NNNNN.vtt` for HLS beside them), and a
    static `manifest.mpd` over all of them."""
    out_dir = Path(out_dir).resolve()
    descriptors = []
    for t in tracks:
        source = {"in": str(Path(t.source).resolve()), "stream": t.stream}
        folder = out_dir / t.name
        if t.stream == "text":
            # HLS players read segmented WebVTT; dash.js reads WebVTT in fMP4 (wvtt) only: the
            # same cues twice, side by side in the track's folder. The label keeps two tracks of
            # one language apart: Shaka puts them in one AdaptationSet (one track) without it.
            # Shaka refuses `und`: an undetermined language is left unsaid
            language = {"language": t.language} if t.language else {}
            label = (t.label or t.name).replace(",", " ")  # a comma ends a descriptor field
            descriptors += [
                {
                    **source,
                    "segment_template": str(folder / "$Number%05d$.vtt"),
                    "playlist_name": f"{t.name}/index.m3u8",
                    "hls_group_id": SUBTITLES_GROUP,
                    "hls_name": label,
                    **language,
                    "hls_only": "1",
                },
                {
                    **source,
                    "format": "mp4",
                    "init_segment": str(folder / "init.mp4"),
                    "segment_template": str(folder / "$Number%05d$.m4s"),
                    **language,
                    "dash_label": label,
                    "dash_only": "1",
                },
            ]
        else:
            descriptors.append(
                {
                    **source,
                    "init_segment": str(folder / "init.mp4"),
                    "segment_template": str(folder / "$Number%05d$.m4s"),
                    "playlist_name": f"{t.name}/index.m3u8",
                    **({"hls_group_id": t.group, "hls_name": t.name} if t.group else {}),
                    **({"language": t.language} if t.language else {}),
                    **({"dash_roles": "main"} if t.default else {}),
                }
            )
    return [
        *(",".join(f"{k}={v}" for k, v in d.items()) for d in descriptors),
        "--segment_duration",
        str(segment_s),
        "--generate_static_live_mpd",
        "--mpd_output",
        str(out_dir / DASH_MANIFEST),
        "--hls_playlist_type",
        "VOD",
        # creation and modification times 0, as FFmpeg's +bitexact writes them: the same
        # renditions give the same segments and manifests on every run
        "--use_fake_clock_for_muxer",
        # its own multivariant playlist pairs every video with every audio group; ours is written
        # beside it from the media playlists
        "--hls_master_playlist_output",
        str(out_dir / ".shaka-master.m3u8"),
    ]


def run_packager(args: list[str], *, timeout_s: Optional[float] = None) -> RunResult:
    """Run Shaka Packager and wait for it. Raises PackagerFailed unless it exited 0."""
    argv = [find_packager(), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started_at, start = time.time(), time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = RunResult(
        argv=[_KEY_IN_ARGV.sub(r"\1<redacted>", a) for a in argv],  # provenance keeps argv
        returncode=proc.returncode,
        stderr_tail="\n".join(proc.stderr.splitlines()[-60:]),
        wall_s=time.monotonic() - start,
        cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        started_at=started_at,
    )
    if proc.returncode != 0:
        raise PackagerFailed(result)
    return result
