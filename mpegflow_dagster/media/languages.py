"""Language tags as players want them: BCP 47 in its shortest form (`fr`, `pt-BR`), whether the
source said ISO 639-2 (`fre`, `fra`: what MP4 and Matroska stream tags hold) or a sidecar's name
did, and a name to show in a player's menu, in the language itself (`français`)."""

from __future__ import annotations

from typing import Optional

import langcodes

UNDETERMINED = "und"


def bcp47(tag: Optional[str]) -> str:
    """The standard form of `tag` (`fre` -> `fr`, `pt-br` -> `pt-BR`); `und` when it is missing
    or not a language tag."""
    if not tag:
        return UNDETERMINED
    try:
        standard = langcodes.standardize_tag(tag.strip())
    except ValueError:  # langcodes.LanguageTagError is one
        return UNDETERMINED
    return standard if langcodes.tag_is_valid(standard) else UNDETERMINED


def display_name(tag: str) -> str:
    """The language's name in itself (`fr` -> `français`, `pt-BR` -> `português (Brasil)`);
    the tag itself for `und` or a language without a known name."""
    if tag == UNDETERMINED:
        return tag
    language = langcodes.Language.get(tag)
    name = language.autonym()
    return tag if name.startswith("Unknown language") else name
