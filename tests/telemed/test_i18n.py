"""The patient pages' catalogues: what is shipped is complete, compiles, and is chosen
the way the pages promise; the visit cookie's shape."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from telemed.i18n import (
    LOCALE_DIR,
    CatalogueError,
    load_catalogues,
    parse_accept_language,
    script_message_ids,
)
from telemed.visits import parse_visit_cookie, visit_cookie_value

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "static" / "js" / "visit.js"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def test_spanish_is_complete_and_keeps_every_placeholder() -> None:
    with (LOCALE_DIR / "es" / "LC_MESSAGES" / "messages.po").open("rb") as fileobj:
        catalog = read_po(fileobj)
    messages = [m for m in catalog if m.id]
    assert len(messages) > 50
    for message in messages:
        assert isinstance(message.id, str)
        assert isinstance(message.string, str)
        assert message.string, f"untranslated: {message.id!r}"
        assert not message.fuzzy, f"fuzzy: {message.id!r}"
        assert sorted(PLACEHOLDER.findall(message.id)) == sorted(
            PLACEHOLDER.findall(message.string)
        ), message.id


def test_the_template_holds_every_message_the_sources_mark(tmp_path: Path) -> None:
    """messages.pot is up to date: `make translations` was run after the last change."""
    pot = tmp_path / "fresh.pot"
    pybabel = str(Path(sys.executable).with_name("pybabel"))
    command = [pybabel, "extract", "-F", "babel.cfg", "--no-location", "-o", str(pot), "."]
    subprocess.run(command, cwd=ROOT, capture_output=True, check=True, timeout=60)
    with pot.open("rb") as fileobj:
        fresh = {m.id for m in read_po(fileobj) if m.id}
    with (LOCALE_DIR / "messages.pot").open("rb") as fileobj:
        shipped = {m.id for m in read_po(fileobj) if m.id}
    assert fresh == shipped, {"not in messages.pot": fresh - shipped, "gone": shipped - fresh}


def test_the_script_gets_its_messages_translated() -> None:
    ids = script_message_ids([SCRIPT])
    assert "Everything works. Your connection is good enough for video." in ids
    catalogues = load_catalogues(scripts=[SCRIPT])
    assert set(catalogues.available) >= {"en", "es"}
    spanish = catalogues.get("es").script_json()
    assert spanish["lang"] == "es"
    assert set(spanish["messages"]) == set(ids)
    with (LOCALE_DIR / "es" / "LC_MESSAGES" / "messages.po").open("rb") as fileobj:
        po = {m.id: m.string for m in read_po(fileobj) if m.id}
    assert spanish["messages"] == {i: po[i] for i in ids}
    assert catalogues.get("en").script_json() == {"lang": "en", "messages": {}}


@pytest.mark.parametrize(
    ("profile", "header", "chosen"),
    [
        ("es", "en-US,en;q=0.9", "es"),
        ("en", "es", "en"),
        ("es-MX", "", "es"),
        ("fr", "fr-CA, es;q=0.8, en;q=0.5", "es"),
        ("fr", "de, *;q=0.1", "en"),
        (None, "es;q=0, en", "en"),
        (None, "en;q=0.2, es-419;q=0.9", "es"),
        (None, "", "en"),
        (None, "garbage;;;q=x, ,", "en"),
    ],
)
def test_the_language_is_the_profiles_then_the_browsers_then_english(
    profile: str | None, header: str, chosen: str
) -> None:
    catalogues = load_catalogues()
    assert catalogues.choose(profile, header).code == chosen


def test_accept_language_is_ranked_by_quality() -> None:
    assert parse_accept_language("da, en-GB;q=0.8, en;q=0.7") == ["da", "en-GB", "en"]
    assert parse_accept_language("en;q=0.5, es;q=0.9, *;q=0.1") == ["es", "en"]
    assert parse_accept_language("x" * 50) == []


@pytest.mark.parametrize(
    "text",
    [
        'garbage\nmsgid "a"\nmsgstr "b"\n',
        '#, python-format\nmsgid "Delay %(ms)s ms"\nmsgstr "Retraso %(rtt)s ms"\n',
    ],
    ids=["unreadable", "placeholder"],
)
def test_a_broken_catalogue_stops_start_up(tmp_path: Path, text: str) -> None:
    po = tmp_path / "es" / "LC_MESSAGES" / "messages.po"
    po.parent.mkdir(parents=True)
    po.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogueError, match="messages.po"):
        load_catalogues(tmp_path)


def test_the_visit_cookie_round_trips_and_refuses_other_shapes() -> None:
    value = visit_cookie_value("0f" * 16, "pass-Word_1")
    assert parse_visit_cookie(value) == ("0f" * 16, "pass-Word_1")
    for bad in (None, "", "nodot", ".pass", "visit.", "v." + "p" * 500, "vísit.pass"):
        assert parse_visit_cookie(bad) is None, bad
