"""Video ids: the dynamic partition key of a source video."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePath

_MAX = 64


def video_key(name: str) -> str:
    """A partition key for a source named `name` (a file name or object key).

    Safe everywhere the key is used (paths, S3 keys, Dagster partition keys, URLs): lowercase
    `[a-z0-9._-]`, no leading dot, at most 64 characters. A name that is already safe keeps its
    stem as is (`sample.mp4` -> `sample`); any other gets a hash suffix of the full original so
    two names that slug alike (`a b.mp4`, `a_b.mp4`) never share a key.
    """
    stem = PurePath(name).stem if PurePath(name).suffix else PurePath(name).name
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "video"
    if slug == stem and len(slug) <= _MAX:
        return slug
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug[: _MAX - 9]}-{digest}"
