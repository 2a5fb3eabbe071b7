"""A real MLLP listener for the tests: hl7apy's ``MLLPServer`` (threaded TCP), validating every
message against the HL7 2.6 structures with hl7apy and answering AA, AE or AR.

What it answers is scripted per message type and per patient: ``reject`` (AR with a reason, e.g.
an EMR that takes vitals but not alerts), ``errors_before_ok`` (AE that many times per control id,
then AA, e.g. a database briefly down). A message that does not validate gets AR with the
validator's complaint. Every accepted message is kept, parsed, in arrival order.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hl7apy.exceptions import HL7apyException
from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer

from hl7out.messages import build_ack, parse

TYPES = ("ORU^R01^ORU_R01", "ORU^R40^ORU_R01")


@dataclass
class Script:
    """What the listener answers, and what it saw."""

    reject: dict[str, str] = field(default_factory=dict)  # message type → AR reason
    errors_before_ok: int = 0
    accepted: list[Any] = field(default_factory=list)  # parsed hl7apy messages (AA)
    raw: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # AA/AE/AR in order
    _seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, text: str) -> str:
        with self.lock:
            self.raw.append(text)
            try:
                msg = parse(text)
            except HL7apyException as exc:
                return self._say(text, "AR", f"invalid message: {exc}")
            kind = msg.msh.msh_9.value
            if kind in self.reject:
                return self._say(text, "AR", self.reject[kind])
            cid = msg.msh.msh_10.value
            self._seen[cid] += 1
            if self._seen[cid] <= self.errors_before_ok:
                return self._say(text, "AE", "database busy, try again")
            self.accepted.append(msg)
            return self._say(text, "AA")

    def _say(self, text: str, code: str, reason: str = "") -> str:
        self.answers.append(code)
        return "\x0b" + build_ack(text, code, reason) + "\x1c\x0d"  # type: ignore[arg-type]


class _Handler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, script: Script) -> None:
        super().__init__(message)
        self.script = script

    def reply(self) -> str:
        return self.script.answer(self.incoming_message)


class _Errors(AbstractErrorHandler):  # type: ignore[misc]
    def __init__(self, exc: Exception, message: str, script: Script) -> None:
        super().__init__(exc, message)
        self.script = script

    def reply(self) -> str:
        with self.script.lock:
            return self.script._say(self.incoming_message, "AR", f"unsupported or invalid: {self.exc}")


@contextmanager
def listening(script: Script) -> Iterator[tuple[str, int]]:
    """An MLLP listener on a free port of 127.0.0.1 for the duration."""
    handlers: dict[str, tuple[Any, ...]] = {t: (_Handler, script) for t in TYPES}
    handlers["ERR"] = (_Errors, script)
    server = MLLPServer("127.0.0.1", 0, handlers, timeout=30)
    host, port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, name="mllp-listener", daemon=True)
    thread.start()
    try:
        yield host, port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
