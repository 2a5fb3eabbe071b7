"""InfluxQL over HTTP: the one query client of rpm and the one reader of ``/query`` answers.

The command-line tools (reports, exports, the launcher) query synchronously (:func:`query`); the
services (the notifier's restart, the nurse station's sparklines and ward overview) asynchronously
on their aiohttp session (:func:`query_async`). Both send the credentials of
:class:`~rpm_core.settings.InfluxAuth` and hand back the decoded answer, whose statements
:func:`result_series` checks and :func:`series_rows` flattens. An answer shaped otherwise (a proxy's
error page, a hostile server) is an :class:`InfluxQueryError`, never a crash. Writes go through
:mod:`rpm_core.sink`.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

import orjson

from rpm_core.settings import InfluxAuth, influx_endpoint

QUERY_TIMEOUT_S: Final = 30.0


class InfluxQueryError(ValueError):
    """InfluxDB could not be asked, refused the statement, or answered in a shape ``/query`` never has;
    ``status`` is the HTTP status of a refusal (401, 403, …), else None."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


def _params(q: str, db: str | None, epoch: str | None) -> dict[str, str]:
    return {"q": q, **({"db": db} if db else {}), **({"epoch": epoch} if epoch else {})}


def query(url: str, q: str, *, db: str | None = None, auth: InfluxAuth | None = None, epoch: str | None = None,
          method: str = "POST", timeout_s: float = QUERY_TIMEOUT_S) -> dict[str, Any]:
    """Run ``q`` (one or more statements) and return the decoded answer; credentials are ``auth``,
    else a ``user:password@`` in ``url``. :class:`InfluxQueryError` if InfluxDB cannot be reached
    or answers an HTTP error (its status and InfluxDB's reason in the message) or no JSON object."""
    base, who = influx_endpoint(url, auth)
    body = urllib.parse.urlencode(_params(q, db, epoch)).encode()
    req = urllib.request.Request(f"{base}/query", data=body, method=method, headers=who.headers())  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (http(s) only)
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise InfluxQueryError(f"InfluxDB at {base} answered {exc.code}: {_reason(exc.read())}",
                               status=exc.code) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise InfluxQueryError(f"InfluxDB query failed at {base}: {exc}") from exc
    return _decode(raw, base)


async def query_async(session: Any, url: str, q: str, *, db: str | None, auth: InfluxAuth | None = None,
                      epoch: str | None = None) -> dict[str, Any]:
    """:func:`query` on an ``aiohttp.ClientSession``; a status other than 200 is an :class:`InfluxQueryError`
    (the caller catches ``aiohttp.ClientError`` and ``TimeoutError`` for the connection)."""
    base, who = influx_endpoint(url, auth)
    async with session.get(f"{base}/query", params=_params(q, db, epoch), headers=who.headers()) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise InfluxQueryError(f"InfluxDB at {base} answered {resp.status}: {_reason(raw)}", status=resp.status)
    return _decode(raw, str(base))


MAX_REASON_CHARS: Final = 200
_MAX_REASON_BODY: Final = 65_536  # a larger answer is no InfluxDB error (and not worth decoding)


def _reason(raw: bytes) -> str:
    """InfluxDB's ``{"error": "…"}`` of an HTTP error: printable, at most ``MAX_REASON_CHARS``; any
    other answer (a proxy's page, a huge, nested or non-UTF-8 body) is not quoted. Never raises."""
    if len(raw) > _MAX_REASON_BODY:
        return "no reason given"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:  # also not UTF-8, or nested deeper than orjson goes
        return "no reason given"
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, str) or not error.strip():
        return "no reason given"
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in error)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def _decode(raw: bytes, base: object) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InfluxQueryError(f"{base} did not answer JSON") from exc
    if not isinstance(doc, dict):
        raise InfluxQueryError(f"{base} did not answer like InfluxDB's /query (not an object)")
    return doc


def is_series(s: object) -> bool:
    """Whether ``s`` is a series of an InfluxDB answer: column names, rows as long, optional tags."""
    if not isinstance(s, dict):
        return False
    columns, values, tags = s.get("columns"), s.get("values"), s.get("tags", {})
    return (isinstance(columns, list) and all(isinstance(c, str) for c in columns) and isinstance(values, list)
            and all(isinstance(v, list) and len(v) == len(columns) for v in values) and isinstance(tags, dict))


def result_series(doc: object, statement: int = 0, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The series of statement ``statement`` of an answer (none for a statement that matched nothing).

    :class:`InfluxQueryError` for an error (with ``missing_ok``, a database or measurement that does
    not exist yet reads as no data) or a malformed answer."""
    results = doc.get("results") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and "error" in doc and results is None:
        raise InfluxQueryError(f"InfluxDB refused the query: {str(doc['error'])[:200]}")
    if not isinstance(results, list) or len(results) <= statement or not isinstance(results[statement], dict):
        raise InfluxQueryError("InfluxDB answer without the list of results /query gives")
    result = results[statement]
    if "error" in result:
        if missing_ok and "not found" in str(result["error"]):
            return []
        raise InfluxQueryError(f"InfluxDB query failed: {str(result['error'])[:200]}")
    series = result.get("series") or []
    if not isinstance(series, list) or not all(is_series(s) for s in series):
        raise InfluxQueryError("InfluxDB answer with malformed series")
    return series


def series_rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row of every series as a dict, the series' tags merged in."""
    return [{**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))} for s in series for v in s["values"]]
