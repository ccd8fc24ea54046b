"""The subtitle sidecars of a source, by name: `movie.srt` beside `movie.mp4`, and language-tagged
ones, `movie.fr.srt`, `movie.pt-BR.vtt` (a BCP 47 tag between the stem and the extension)."""

from __future__ import annotations

import re
from typing import Optional, Sequence

_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")


def sidecar_language(name: str, stem: str, extensions: Sequence[str]) -> Optional[str]:
    """The language of `name` if it is a language-tagged sidecar of a source named `stem`, else
    None: `sidecar_language("movie.fr.srt", "movie", [".srt"]) == "fr"`."""
    for ext in extensions:
        if name.startswith(f"{stem}.") and name.endswith(ext):
            language = name[len(stem) + 1 : len(name) - len(ext)]
            if _LANGUAGE.fullmatch(language):
                return language
    return None
