"""What FFmpeg said about its inputs and its errors, without what it echoed.

FFmpeg's stderr mixes its diagnostics with echoes: the banner of every input and output (the
format, the name it was opened by, metadata and chapter titles, streams) and file names inside
error lines. An echo is not evidence: a file named `anti-corruption-talk.mp4`, a title tag that
reads "No space left on device" or the banner of our own chunk join (`Input #0, concat, from`)
must not decide a failure class or fail a verification. So banners and indented lines are
dropped, and every path of the command (and each directory above it, which may hold a video's
name) is replaced by a placeholder, before any rule reads the text.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Sequence

# Banner headers; everything FFmpeg prints under them (metadata, streams, mappings, "Last message
# repeated") is indented, and no diagnostic is.
_BANNER = re.compile(r"(?:Input|Output) #\d+, |Stream mapping:|Press \[q\] to stop")


def ffmpeg_messages(stderr_tail: str, argv: Sequence[str]) -> str:
    """`stderr_tail` as rules may read it: no banner, no indented line, and each path of `argv`
    written as `<input N>`, `<output N>` or `<dir>`."""
    names = _placeholders(argv)
    kept = []
    for line in stderr_tail.splitlines():
        if not line.strip() or line[0].isspace() or _BANNER.match(line):
            continue
        for name, placeholder in names:
            line = line.replace(name, placeholder)
        kept.append(line)
    return "\n".join(kept)


def _placeholders(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(text, placeholder) for every path in `argv` and the directories above it, longest first
    (so a file is replaced whole before its directory is)."""
    found: dict[str, str] = {}
    inputs = outputs = 0
    for previous, arg in zip(["", *argv], argv, strict=False):
        path = arg.removeprefix("file:")
        if not path.startswith("/"):
            continue
        if previous == "-i":
            found.setdefault(path, f"<input {inputs}>")
            inputs += 1
        else:
            found.setdefault(path, f"<output {outputs}>")
            outputs += 1
        for parent in PurePosixPath(path).parents:
            if len(parent.parts) > 2:  # not "/" or a top-level directory such as /tmp
                found.setdefault(str(parent), "<dir>")
    return sorted(found.items(), key=lambda item: -len(item[0]))
