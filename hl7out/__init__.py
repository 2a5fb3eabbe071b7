"""HL7 v2 over MLLP to the hospital's systems: vitals as ORU^R01 (IHE PCD-01 style) and alerts as
ORU^R40 Report Alert (IHE PCD-04, Alert Communication Management), built and parsed with hl7apy.

- :mod:`hl7out.codes`: the codes (LOINC, MDC), UCUM units and the ACM facets;
- :mod:`hl7out.messages`: the codec (frozen dataclasses in, ER7 text out; ACKs parsed and built);
- :mod:`hl7out.mllp`: MLLP framing (pure) and one asyncio connection;
- :mod:`hl7out.sender`: send, wait for the ACK, retry with backoff, dead-letter what is refused;
- :mod:`hl7out.source`: what to send, read from InfluxDB;
- :mod:`hl7out.cli`: ``rpm hl7 send``.

See docs/integration.md for the EMR engineer's view.
"""
