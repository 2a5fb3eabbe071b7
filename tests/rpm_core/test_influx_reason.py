"""``rpm_core.influx._reason``: the text of an InfluxDB error answer is bounded and clean, whatever the body."""

from __future__ import annotations

import pytest

from rpm_core.influx import MAX_REASON_CHARS, _reason


@pytest.mark.parametrize(("raw", "expect"), [
    (b'{"error":"database not found: \\"rpm\\""}', 'database not found: "rpm"'),
    (b"<html>502 Bad Gateway</html>", "no reason given"),
    (b"\xff\xfe{\"error\":\"x\"}", "no reason given"),  # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "no reason given"),  # nested deeper than any decoder should go
    (b'{"error":' + b"[" * 500 + b"]" * 500 + b"}", "no reason given"),  # an error that is no text
    (b'{"error":"\\u001b[2Jwiped\\r\\nforged line"}', "\\x1b[2Jwiped\\r\\nforged line"),
    (b'{"error":""}', "no reason given"),
    (b"null", "no reason given"),
    (b"", "no reason given"),
])
def test_a_hostile_error_body_gives_a_bounded_clean_reason(raw: bytes, expect: str) -> None:
    assert _reason(raw) == expect


def test_a_huge_error_is_cut_to_the_bound() -> None:
    assert len(_reason(b'{"error":"' + b"x" * 10_000 + b'"}')) == MAX_REASON_CHARS
    assert _reason(b'{"error":"' + b"x" * 10_000_000 + b'"}') == "no reason given"
