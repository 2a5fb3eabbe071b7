"""``rpm export fhir --post URL``: the Bundle as a FHIR transaction, POSTed to a server's base URL with retries.

FHIR R4 http.html#transaction: ``POST [base]`` with a Bundle of type ``transaction``; the server
answers 200 with a ``transaction-response`` Bundle, or an OperationOutcome. 408, 429, 5xx and
network errors are retried with jittered exponential backoff (the same Bundle: its PUTs are
idempotent); any other answer is final and its OperationOutcome's diagnostics are reported.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Final

import orjson

from rpm_core.backoff import backoff_s
from rpm_core.errors import ServiceError

_LOGGER = logging.getLogger(__name__)

FHIR_JSON: Final = "application/fhir+json"
RETRYABLE_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
TIMEOUT_S: Final = 60.0


def _outcome_text(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    issues = doc.get("issue") if isinstance(doc, dict) else None
    if isinstance(issues, list):
        return "; ".join(str(i.get("diagnostics") or i.get("code")) for i in issues if isinstance(i, dict))
    return str(doc)[:200]


def _attempt(url: str, body: bytes, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 (http(s) only, checked)
        "Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_transaction(url: str, body: bytes, *, retries: int = 5, backoff_max_s: float = 30.0, token: str = "",
                     sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """POST the transaction; the ``transaction-response`` Bundle, or :class:`ServiceError` saying why not."""
    if not url.startswith(("http://", "https://")):
        raise ServiceError(f"--post {url!r}: not an http(s) URL of a FHIR server's base")
    detail = ""
    for attempt in range(1, retries + 2):
        try:
            status, answer = _attempt(url, body, token)
        except (urllib.error.URLError, OSError) as exc:
            status, answer, detail = 0, b"", f"no answer: {exc}"
        if 200 <= status < 300:
            doc = orjson.loads(answer)
            if not isinstance(doc, dict) or doc.get("type") != "transaction-response":
                raise ServiceError(f"{url} answered {status} without a transaction-response Bundle")
            return doc
        if status:
            detail = f"HTTP {status}: {_outcome_text(answer)}"
            if status not in RETRYABLE_STATUS:
                raise ServiceError(f"{url} refused the transaction ({detail})")
        _LOGGER.warning("FHIR transaction to %s, attempt %d: %s", url, attempt, detail)
        if attempt <= retries:
            sleep(backoff_s(attempt, cap_s=backoff_max_s))
    raise ServiceError(f"{url}: gave up after {retries + 1} attempts ({detail})")
