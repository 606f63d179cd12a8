"""The visit as a value: its states and moves, its link's secrets and expiry, and its
document form (telemed/visits.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from telemed.visits import (
    FINAL_STATES,
    MAX_QUALITY_SAMPLES,
    MOVES,
    InvalidMove,
    PreCheck,
    QualitySample,
    Recommendation,
    Visit,
    VisitState,
    new_secret,
    secret_hash,
    secret_matches,
    visit_from_doc,
    visit_to_doc,
)

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
S = VisitState


def visit(**changes: object) -> Visit:
    base = Visit(
        id="v1",
        patient_id="p1",
        clinician_id="d1",
        scheduled_at=T0,
        created_at=T0 - timedelta(days=1),
        created_by="cli",
        link_hash=secret_hash("token"),
        link_expires_at=T0 + timedelta(hours=24),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


ALLOWED = {
    (S.SCHEDULED, S.WAITING),
    (S.SCHEDULED, S.ENDED),
    (S.SCHEDULED, S.CANCELLED),
    (S.SCHEDULED, S.NO_SHOW),
    (S.WAITING, S.IN_CALL),
    (S.WAITING, S.ENDED),
    (S.WAITING, S.CANCELLED),
    (S.IN_CALL, S.WAITING),
    (S.IN_CALL, S.ENDED),
}


@pytest.mark.parametrize("start", list(S))
@pytest.mark.parametrize("to", list(S))
def test_only_the_documented_moves_are_allowed(start: S, to: S) -> None:
    current = visit(state=start)
    if (start, to) in ALLOWED:
        moved = current.move(to, T0, "d1")
        assert moved.state is to
        assert moved.transitions[-1].state is to
        assert moved.transitions[-1].by == "d1"
    else:
        with pytest.raises(InvalidMove) as caught:
            current.move(to, T0, "d1")
        assert caught.value.current is start
        assert caught.value.wanted is to
    assert (to in MOVES[start]) == ((start, to) in ALLOWED)


def test_final_states_are_final_and_close_the_visit() -> None:
    assert {s for s in S if s.final} == FINAL_STATES == {S.ENDED, S.CANCELLED, S.NO_SHOW}
    for state in FINAL_STATES:
        assert not visit(state=state).open
        assert not MOVES[state]


def test_send_back_keeps_the_original_place_in_the_queue() -> None:
    arrived = visit().move(S.WAITING, T0, "patient")
    assert arrived.waiting_since == T0
    admitted = arrived.move(S.IN_CALL, T0 + timedelta(minutes=5), "d1")
    assert admitted.admitted_at == T0 + timedelta(minutes=5)
    back = admitted.move(S.WAITING, T0 + timedelta(minutes=9), "d1")
    assert back.waiting_since == T0  # not the time it was sent back
    ended = back.move(S.IN_CALL, T0 + timedelta(minutes=12), "d1").move(
        S.ENDED, T0 + timedelta(minutes=20), "d1"
    )
    assert ended.ended_at == T0 + timedelta(minutes=20)
    assert [t.state for t in ended.transitions] == [
        S.WAITING,
        S.IN_CALL,
        S.WAITING,
        S.IN_CALL,
        S.ENDED,
    ]


def test_the_link_works_only_while_open_and_before_it_expires() -> None:
    v = visit()
    assert v.link_usable(T0)
    assert v.link_usable(v.link_expires_at - timedelta(seconds=1))
    assert not v.link_usable(v.link_expires_at)
    assert not visit(state=S.ENDED).link_usable(T0)
    assert not visit(state=S.CANCELLED).link_usable(T0)


def test_secrets_are_random_and_only_their_hash_is_kept() -> None:
    one, two = new_secret(), new_secret()
    assert one != two
    assert len(one) >= 43  # 256 bits, URL-safe base64
    assert secret_hash(one) == hashlib.sha256(one.encode()).hexdigest()
    assert secret_matches(one, secret_hash(one))
    assert not secret_matches(two, secret_hash(one))
    assert not secret_matches("", "")  # no pass stored: nothing matches
    assert not secret_matches(one, "")


def test_quality_samples_are_capped() -> None:
    sample = QualitySample(T0, "patient", 50.0, 0.0, 800.0, 700.0, False)
    v = visit()
    for _ in range(MAX_QUALITY_SAMPLES + 5):
        v = v.with_quality(sample)
    assert len(v.quality) == MAX_QUALITY_SAMPLES


def test_a_visit_survives_its_document_form() -> None:
    v = (
        visit(
            pass_hash=secret_hash("pass"),
            link_claimed_at=T0,
            patient_online=True,
            precheck=PreCheck(True, False, 31.5, None, Recommendation.AUDIO, T0),
        )
        .move(S.WAITING, T0, "patient")
        .with_quality(QualitySample(T0, "clinician", None, 1.5, 900.0, None, True))
    )
    assert visit_from_doc(visit_to_doc(v)) == v
    assert "token" not in str(visit_to_doc(v))
