"""The languages of the patient's pages: gettext catalogues, one per language.

The source of truth is the `.po` file of each language under `telemed/locale/` (English
is the source text itself and needs none). At start-up each catalogue is compiled in
memory with Babel, the same compiler as `pybabel compile`, so a clean clone has nothing
to build and a catalogue can never be older than its `.po`. A fuzzy entry is not used.

One catalogue serves both the templates (jinja2's `i18n` extension) and the page's
scripts: the messages a script needs are found by extracting its `_("...")` calls with
Babel's JavaScript extractor, and the page carries their translations as JSON.

Update the catalogues with `make translations` (pybabel extract + update; see babel.cfg).
"""

from __future__ import annotations

import gettext
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babel.core import negotiate_locale
from babel.messages.extract import extract
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po
from babel.support import Translations
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"
SOURCE_LANGUAGE = "en"  # the msgids are English
MAX_ACCEPT_LANGUAGE = 32  # ranges read from one Accept-Language header

_RANGE = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")


class CatalogueError(Exception):
    """A catalogue cannot be read; the message names the file."""


@dataclass(frozen=True, slots=True)
class Language:
    code: str  # a BCP 47 tag, e.g. "en", "es"
    translations: gettext.NullTranslations
    script_messages: Mapping[str, str] = field(default_factory=dict)  # msgid -> text

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.translations.ngettext(singular, plural, n)

    def template_globals(self) -> dict[str, Callable[..., Any]]:
        """`gettext`, `ngettext` and `_` for a template rendered in this language (they
        shadow the English ones the environment installs), in jinja2's "newstyle"."""
        text = _newstyle_gettext(self.translations.gettext)
        return {
            "gettext": text,
            "_": text,
            "ngettext": _newstyle_ngettext(self.translations.ngettext),
        }

    def script_json(self) -> dict[str, Any]:
        """What the page's scripts get: the language and their messages' translations."""
        return {"lang": self.code, "messages": dict(self.script_messages)}


class Catalogues:
    """The languages the patient pages are offered in, English always among them."""

    def __init__(self, languages: Iterable[Language]) -> None:
        self._languages = {lang.code: lang for lang in languages}
        if SOURCE_LANGUAGE not in self._languages:
            self._languages[SOURCE_LANGUAGE] = Language(SOURCE_LANGUAGE, gettext.NullTranslations())

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(sorted(self._languages))

    def get(self, code: str) -> Language:
        return self._languages.get(code, self._languages[SOURCE_LANGUAGE])

    def choose(self, profile: str | None, accept_language: str | None) -> Language:
        """The patient's own language when offered, else the browser's preference (the
        Accept-Language header), else English."""
        if profile:
            found = self.match([profile])
            if found is not None:
                return self._languages[found]
        found = self.match(parse_accept_language(accept_language or ""))
        return self._languages[found or SOURCE_LANGUAGE]

    def match(self, preferred: Sequence[str]) -> str | None:
        """The first offered language matching one of `preferred` ("es-MX" finds "es")."""
        available = list(self._languages)
        for tag in preferred:
            found = negotiate_locale([tag], available, sep="-")
            if found is None and "-" in tag:
                found = negotiate_locale([tag.split("-", 1)[0]], available, sep="-")
            if found is not None:
                return found
        return None


def parse_accept_language(header: str) -> list[str]:
    """The language ranges of an Accept-Language header, most preferred first; a range
    with q=0 or a malformed one is dropped, and so is "*"."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:MAX_ACCEPT_LANGUAGE]):
        tag, *params = (p.strip() for p in part.split(";"))
        if not _RANGE.match(tag):
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]


def script_message_ids(scripts: Iterable[Path]) -> list[str]:
    """The msgids of the `_("...")` calls in these scripts, in order of appearance."""
    found: dict[str, None] = {}
    for script in scripts:
        with script.open("rb") as fileobj:
            for _lineno, message, _comments, _context in extract(
                "javascript", fileobj, keywords={"_": None}
            ):
                if isinstance(message, str):
                    found[message] = None
    return list(found)


def compile_po(path: Path) -> Translations:
    """A `.po` file compiled in memory, as `pybabel compile` would (fuzzy entries left
    out)."""
    try:
        with path.open("rb") as fileobj:
            catalog = read_po(fileobj, domain=DOMAIN, abort_invalid=True)
    except (OSError, ValueError, PoFileError) as exc:
        raise CatalogueError(f"{path}: cannot be read: {exc}") from exc
    for message, errors in catalog.check():  # e.g. a translation that drops a %(name)s
        if errors:
            raise CatalogueError(f"{path}: {message.id!r}: {errors[0]}")
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return Translations(fp=buffer, domain=DOMAIN)


def load_catalogues(locale_dir: Path = LOCALE_DIR, scripts: Iterable[Path] = ()) -> Catalogues:
    """Every `<lang>/LC_MESSAGES/messages.po` under `locale_dir`. Blocking: call it in a
    thread."""
    script_ids = script_message_ids(scripts)
    languages = [Language(SOURCE_LANGUAGE, gettext.NullTranslations())]
    for po in sorted(locale_dir.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        code = po.parent.parent.name.replace("_", "-")
        if code == SOURCE_LANGUAGE:
            continue
        translations = compile_po(po)
        messages = {msgid: translations.gettext(msgid) for msgid in script_ids}
        languages.append(Language(code, translations, messages))
    return Catalogues(languages)


def _newstyle_gettext(func: Callable[[str], str]) -> Callable[..., str]:
    @pass_context
    def gettext(__context: Context, __string: str, **variables: Any) -> str:
        text = func(__string)
        if __context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables  # always a format string, as jinja2's own gettext

    return gettext


def _newstyle_ngettext(func: Callable[[str, str, int], str]) -> Callable[..., str]:
    @pass_context
    def ngettext(
        __context: Context, __singular: str, __plural: str, __num: int, **variables: Any
    ) -> str:
        variables.setdefault("num", __num)
        text = func(__singular, __plural, __num)
        if __context.eval_ctx.autoescape:
            text = Markup(text)
        return text % variables

    return ngettext
