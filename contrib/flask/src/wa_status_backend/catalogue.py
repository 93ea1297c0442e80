"""The bell's texts: the shared catalogue, the app's overrides, the locale a business reads.

The catalogue is ``bell-messages.json``, shipped inside this package. It is a copy of the repo's
``contrib/i18n/bell-messages.json``, the one file the Flask and React kits both read; a test fails
when the two differ. Hebrew (``he``) comes first and is the default: the businesses this is built
for work in Hebrew, and its texts are the original ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Mapping, Optional, Union

__all__ = [
    "DEFAULT_LOCALE",
    "TEXT_KEYS",
    "Texts",
    "Catalogue",
    "load_catalogue",
]

DEFAULT_LOCALE = "he"
# The texts a reminder row carries; the catalogue also holds keys only the React bell uses.
TEXT_KEYS = ("title", "note")
# Bounds an override must keep: the reminder's columns are short texts, not documents.
MAX_TITLE_LEN = 255
MAX_NOTE_LEN = 2000
MAX_LOCALE_LEN = 16

LocaleSource = Union[str, Callable[[Any], Optional[str]], None]


@dataclass(frozen=True)
class Texts:
    """What one reminder says, in one locale."""

    lang: str
    title: str
    note: str


def load_catalogue() -> dict:
    """The catalogue shipped with the package: ``{locale: {key: text}}``."""
    raw = resources.files(__package__).joinpath("bell-messages.json").read_bytes()
    return json.loads(raw.decode("utf-8"))


class Catalogue:
    """The shipped texts with the app's overrides merged over them.

    ``overrides`` is ``{locale: {"title": ..., "note": ...}}``: any subset of the keys for a
    locale the catalogue has, or both keys for a new locale. Every problem is reported at once,
    when the app starts, not when the first business drops.
    """

    def __init__(self, overrides: Optional[Mapping[str, Mapping[str, str]]] = None,
                 default_locale: str = DEFAULT_LOCALE) -> None:
        merged = {loc: dict(texts) for loc, texts in load_catalogue().items()}
        problems = []
        for loc, texts in (overrides or {}).items():
            if not _is_locale(loc):
                problems.append(f"texts: {loc!r} is not a locale (letters, digits, '-' or '_', at most 16)")
                continue
            if not isinstance(texts, Mapping):
                problems.append(f"texts[{loc!r}] must be a mapping of {', '.join(TEXT_KEYS)}")
                continue
            for key, value in texts.items():
                if key not in TEXT_KEYS:
                    problems.append(f"texts[{loc!r}]: unknown key {key!r} (known: {', '.join(TEXT_KEYS)})")
                elif not isinstance(value, str) or not value.strip():
                    problems.append(f"texts[{loc!r}][{key!r}] must be a non-empty string")
                elif len(value) > (MAX_TITLE_LEN if key == "title" else MAX_NOTE_LEN):
                    problems.append(f"texts[{loc!r}][{key!r}] is longer than the column allows")
            merged.setdefault(loc, {}).update(
                {k: v for k, v in texts.items() if k in TEXT_KEYS and isinstance(v, str)}
            )
        for loc, texts in merged.items():
            missing = [k for k in TEXT_KEYS if not texts.get(k)]
            if missing:
                problems.append(f"texts[{loc!r}]: a new locale needs {', '.join(missing)}")
        if default_locale not in merged:
            problems.append(f"locale {default_locale!r} is not in the catalogue ({', '.join(sorted(merged))})")
        if problems:
            raise ValueError("wa_status_backend: " + "; ".join(problems))
        self._texts = merged
        self.default_locale = default_locale

    @property
    def locales(self) -> list:
        return sorted(self._texts)

    def has(self, locale: Any) -> bool:
        return isinstance(locale, str) and locale in self._texts

    def texts(self, locale: str) -> Texts:
        t = self._texts[locale]
        return Texts(lang=locale, title=t["title"], note=t["note"])


def _is_locale(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_LOCALE_LEN
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)
    )
