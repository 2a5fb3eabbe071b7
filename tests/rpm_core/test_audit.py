"""The audit entry codec, chains and verify, without services (the real run is tests/security/test_audit_trail.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpm_core.audit import (
    GENESIS,
    AuditDecodeError,
    AuditEvent,
    Chain,
    Sealed,
    StoredRecord,
    canonical,
    config_event,
    decode_entry,
    entry_hash,
    last_config_digest,
    verify_log,
)
from rpm_core.signing import KeyRing

KEYS = KeyRing.generate("k1")


def stored(sealed: list[Sealed]) -> list[StoredRecord]:
    return [StoredRecord(0, n, s.key, s.value, s.headers[0][1] if s.headers else None) for n, s in enumerate(sealed)]


def log_of(chains: int = 2, per_chain: int = 4, keys: KeyRing | None = KEYS) -> list[StoredRecord]:
    """Entries of several writers, interleaved as concurrent writers' are; later chains anchored."""
    out: list[Sealed] = []
    writers = []
    for c in range(chains):
        writers.append(Chain(via=f"w{c}", keys=keys, anchor=out[-1].digest if out else None))
        out.append(writers[-1].seal(AuditEvent(action="login", actor=f"a{c}")))
    for n in range(1, per_chain):
        for c, w in enumerate(writers):
            out.append(w.seal(AuditEvent(action="ack", actor=f"a{c}", target=f"alert-{n}", patient="p0001",
                                         detail={"n": n, "by": "Ana Lima", "kiosk": False})))
    return stored(out)


def test_a_chain_links_numbers_and_signs() -> None:
    chain = Chain(via="nurse-station", keys=KEYS)
    first, second = chain.seal(AuditEvent(action="login", actor="desk-1")), chain.seal(AuditEvent("ack", "desk-1"))
    a, b = decode_entry(first.value), decode_entry(second.value)
    assert (a["seq"], a["prev"], b["seq"], b["prev"]) == (0, GENESIS, 1, entry_hash(first.value))
    assert first.headers[0][0] == "rpm-sig" and first.key == chain.id.encode()
    assert canonical(a) == first.value


def test_a_clean_log_verifies() -> None:
    verdict = verify_log(log_of(), KEYS)
    assert verdict.ok and verdict.entries == 8 and verdict.chains == 2 and verdict.signed


def test_a_retried_write_is_a_duplicate_not_an_error() -> None:
    log = log_of()
    verdict = verify_log([*log[:3], log[2], *log[3:]], KEYS)
    assert verdict.ok and verdict.duplicates == 1


@pytest.mark.parametrize("keys", [KEYS, None], ids=["signed", "hashes-only"])
def test_removed_reordered_and_altered_entries_are_named(keys: KeyRing | None) -> None:
    log = log_of(keys=keys)
    removed = verify_log([r for r in log if r.offset != 4], keys)
    assert not removed.ok and removed.bad is not None and removed.bad.offset == 6 and "missing" in removed.problem
    swapped = [*log[:4], log[6], log[5], log[4], *log[7:]]
    reordered = verify_log(swapped, keys)
    assert not reordered.ok and reordered.bad is not None and reordered.bad.offset == 6
    body = decode_entry(log[4].value)
    body["actor"] = "someone else"
    altered = [StoredRecord(0, r.offset, r.key, canonical(body) if r.offset == 4 else r.value, r.sig) for r in log]
    verdict = verify_log(altered, keys)
    assert not verdict.ok and verdict.bad is not None
    # with the key the altered entry itself fails; without, the next of its chain (offset 6) names it
    assert verdict.bad.offset == (4 if keys else 6), verdict.problem


def test_a_rewriter_without_the_key_cannot_recompute_the_chain() -> None:
    """Re-sealing a whole chain with another key (or none) is refused at its first entry."""
    log = log_of()
    forged = [*log[:2], *stored([Chain(via="w0", keys=KeyRing.generate("k1"), chain_id="x").seal(
        AuditEvent("login", "a0"))])]
    verdict = verify_log(forged, KEYS)
    assert not verdict.ok and "does not verify" in verdict.problem
    unsigned = [StoredRecord(0, r.offset, r.key, r.value, None) for r in log]
    assert "not signed" in verify_log(unsigned, KEYS).problem


def test_an_anchor_to_a_removed_entry_is_found() -> None:
    log = log_of(chains=2, per_chain=1)  # chain w1's first entry anchors to w0's
    verdict = verify_log(log[1:], KEYS)
    assert not verdict.ok and "anchor" in verdict.problem


def test_heads_find_entries_cut_from_the_end() -> None:
    log = log_of()
    heads = verify_log(log, KEYS).heads
    assert verify_log(log, KEYS, heads).ok
    cut = verify_log(log[:-1], KEYS, heads)
    assert not cut.ok and "gone" in cut.problem


@pytest.mark.parametrize("value", [b"", b"[]", b'{"v": 1}', b"\xff", b'{"v":1, "chain": "x"}'])
def test_values_that_are_not_entries_are_refused(value: bytes) -> None:
    with pytest.raises(AuditDecodeError):
        decode_entry(value)


def test_a_non_canonical_encoding_is_refused() -> None:
    sealed = Chain(via="x", keys=None).seal(AuditEvent("login", "desk-1"))
    with pytest.raises(AuditDecodeError, match="canonical"):
        decode_entry(sealed.value.replace(b",", b", ", 1))


def test_text_is_made_printable_and_bounded() -> None:
    sealed = Chain(via="x", keys=None).seal(AuditEvent("login", "desk\n1\x1b[31m" + "x" * 500))
    actor = decode_entry(sealed.value)["actor"]
    assert actor.isprintable() and len(actor) == 128


def test_config_changes_are_told_from_the_last_verified_load() -> None:
    chain = Chain(via="rpm worker", keys=KEYS)
    first = config_event("rules", "alert_rules.yaml", "a" * 64, None, "rpm")
    assert first.action == "rules.loaded"
    log = stored([chain.seal(first)])
    assert last_config_digest(log, "rules", KEYS) == "a" * 64
    assert config_event("rules", "r.yaml", "a" * 64, "a" * 64, "rpm").action == "rules.loaded"
    assert config_event("rules", "r.yaml", "b" * 64, "a" * 64, "rpm").action == "rules.changed"
    forged = stored([Chain(via="x", keys=None).seal(config_event("rules", "r", "c" * 64, None, "evil"))])
    assert last_config_digest([*log, *forged], "rules", KEYS) == "a" * 64, "an unsigned entry is not believed"


@settings(max_examples=200, deadline=None)
@given(data=st.data(), chains=st.integers(1, 3), per_chain=st.integers(2, 4))
def test_any_single_rewrite_of_a_signed_log_fails(data: st.DataObject, chains: int, per_chain: int) -> None:
    """Removed (any, the newest too: against recorded heads), altered, or moved within its chain."""
    log = log_of(chains=chains, per_chain=per_chain)
    heads = verify_log(log, KEYS).heads
    kind = data.draw(st.sampled_from(["remove", "swap", "flip"]))
    i = data.draw(st.integers(0, len(log) - 1))
    if kind == "remove":
        bad = log[:i] + log[i + 1:]
    elif kind == "swap":
        chain = decode_entry(log[i].value)["chain"]
        later = [j for j in range(i + 1, len(log)) if decode_entry(log[j].value)["chain"] == chain]
        if not later:
            return
        j = data.draw(st.sampled_from(later))
        bad = list(log)
        bad[i], bad[j] = bad[j], bad[i]
    else:
        value = bytearray(log[i].value or b"")
        pos = data.draw(st.integers(0, len(value) - 1))
        value[pos] ^= data.draw(st.integers(1, 255))
        bad = [*log[:i], StoredRecord(0, i, log[i].key, bytes(value), log[i].sig), *log[i + 1:]]
    assert not verify_log(bad, KEYS, heads).ok


def test_every_problem_is_listed_so_one_forgery_cannot_hide_the_next() -> None:
    log = log_of()
    junk = StoredRecord(0, 99, b"x", b'{"forged": true}', None)
    bad = [log[0], junk, *log[1:5], *log[6:]]  # junk appended early, entry 5 removed later
    first = verify_log(bad, KEYS)
    assert first.bad is junk and len(first.problems) == 1
    every = verify_log(bad, KEYS, every=True)
    assert [rec.offset if rec else None for rec, _p in every.problems] == [99, 7]
    assert "missing" in every.problems[1][1]
    assert every.entries == len(log) - 1, "authentic entries after a gap are still counted"
    assert verify_log(log, KEYS, every=True).ok


class _Kafka:
    """A producer that refuses (``down``) or takes every entry: Kafka as the trail's writer meets it."""

    def __init__(self) -> None:
        import asyncio

        self.down = True
        self.stored: list[bytes] = []
        self.refused = asyncio.Event()  # set at the second refusal (the first entry tried again)
        self._refusals = 0

    async def send_and_wait(self, topic: str, *, value: bytes, key: bytes, headers: object, partition: int) -> None:
        from aiokafka.errors import KafkaConnectionError

        if self.down:
            self._refusals += 1
            if self._refusals == 2:
                self.refused.set()
            raise KafkaConnectionError("no broker")
        self.stored.append(value)


async def test_a_trail_that_cannot_store_says_so_until_it_has_and_tells_of_entries_it_lost() -> None:
    import asyncio

    from rpm_core.audit import LOST_HOLD_S, QUEUE_MAX, STUCK_AFTER_S, AuditTrail

    now = [1000.0]
    trail = AuditTrail(bootstrap="unused", keys=KEYS, via="nurse-station", clock=lambda: now[0])
    kafka = trail._producer = _Kafka()
    trail.record(AuditEvent(action="ack", actor="nurse-1"))
    trail.record(AuditEvent(action="ack", actor="nurse-2"))
    writer = asyncio.create_task(trail.run())
    try:
        await asyncio.wait_for(kafka.refused.wait(), 60)  # the first entry refused, and tried again
        assert trail.problem is None  # a refusal or two is not yet a problem: Kafka may be electing a leader
        now[0] += STUCK_AFTER_S
        assert trail.problem == ("2 audit entries of people's actions wait to be stored in rpm.audit for 15 s "
                                 "(Kafka: KafkaConnectionError)")
        kafka.down = False
        await trail.flush()
        assert trail.problem is None and len(kafka.stored) == 2 and trail.written == 2
        for k in range(QUEUE_MAX + 3):  # Kafka gone long enough for the queue to fill: three are lost
            kafka.down = True
            trail.record(AuditEvent(action="ack", actor=f"nurse-{k}"))
        assert trail.lost == 3
        assert "3 audit entries of people's actions were lost (queue full)" in (trail.problem or "")
        kafka.down = False
        await trail.flush()
        assert trail.problem is not None  # a loss is for good: still told after the rest is stored
        now[0] += LOST_HOLD_S + 1
        assert trail.problem is None
    finally:
        writer.cancel()
