# ruff: noqa: T201 - a CLI talks to its user with print (as rpm_app/cli.py does)
"""``rpm deadletter list`` and ``rpm deadletter replay``; registered by :func:`add_commands`.

The work is :mod:`stream.deadletter_tools`'s (imported when a command runs, so ``rpm --help`` does
not load aiokafka and numpy); here are the options, the output and the exit statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Final

import orjson

if TYPE_CHECKING:
    from stream.deadletter_tools import Entry, Outcome, Selection

_SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it

LIST_HELP: Final = "show the records of rpm.deadletter: why each input was rejected, by whom, when"
LIST_EPILOG: Final = """\
One line per record: Kafka offset, received_at (UTC), stage, source, size, reason; then the count of
records by stage and kind of reason (numbers as N). Payloads are health data: shown only with
--payload. --json prints one JSON object per record (with its partition and offset) and the summary
on stderr. The topic is read from the beginning until past its end and idle for a second (Tansu's
end offsets can lag behind the real end), so records written meanwhile may show too.
"""
REPLAY_HELP: Final = "produce dead-lettered readings again, to where they came from, once the cause is fixed"
REPLAY_EPILOG: Final = """\
--stage worker: records the worker isolated (source rpm.readings, e.g. "processing failed: <Error>")
are produced again, unchanged, to the rpm.readings partition of their patients, if the worker's
decoder accepts them. --stage bridge: MQTT messages the bridge rejected are validated again exactly
as the bridge does (at the time it received them) and produced as the record it would have built;
those still invalid are reported, not dead-lettered again. Truncated payloads cannot be replayed.

Replaying twice is harmless downstream: InfluxDB points are keyed (patient, metric, device, source,
time) and the worker's detectors drop samples they have already seen. Each run still produces every
replayable record selected, and says how many. A record that fails in the worker again goes back to
rpm.deadletter under a new offset: use --offsets to replay a range once.

Exit status: 0 every selected record was replayed (with --dry-run: would be), 1 some could not be,
2 usage errors or Kafka unusable (nothing replayed).
"""


def add_commands(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``rpm deadletter list`` and ``rpm deadletter replay``."""
    deadletter = sub.add_parser("deadletter", help="inspect rpm.deadletter and replay records from it",
                                description="The operator's view of rpm.deadletter, and a way to put records back.")
    commands = deadletter.add_subparsers(dest="deadletter_command", required=True, metavar="COMMAND")

    p = commands.add_parser("list", help=LIST_HELP, description=LIST_HELP, epilog=LIST_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", help="only this stage: bridge, worker, duplicate, sink, hl7")
    _add_selection(p)
    p.add_argument("--since", type=_since, help="only records received at or after this ISO 8601 time (UTC unless "
                                                "it says otherwise), e.g. 2025-11-25T08:00Z")
    p.add_argument("--limit", type=_positive_int, help="show the first N selected records (the summary counts all)")
    p.add_argument("--json", action="store_true", help="one JSON object per record, for scripts")
    p.add_argument("--payload", action="store_true", help="show the payloads too (health data!)")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("replay", help=REPLAY_HELP, description=REPLAY_HELP, epilog=REPLAY_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=("worker", "bridge"), help="which records to put back")
    _add_selection(p)
    p.add_argument("--since", type=_since, help="only records received at or after this ISO 8601 time")
    p.add_argument("--dry-run", action="store_true", help="say what would be replayed; produce nothing")
    p.set_defaults(func=cmd_replay)


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="only records whose reason contains this (case-insensitive)")
    p.add_argument("--offsets", type=_offsets, help="only these Kafka offsets: A-B (inclusive), A- or A")
    p.add_argument("--kafka-url", help="kafka://host:port (env RPM_KAFKA_URL)")


def _offsets(text: str) -> tuple[int, int | None]:
    from stream.deadletter_tools import parse_offsets

    try:
        return parse_offsets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _since(text: str) -> float:
    from stream.deadletter_tools import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _bootstrap(args: argparse.Namespace) -> str:
    """Kafka's bootstrap servers: ``--kafka-url``, else ``RPM_KAFKA_URL`` (as ``rpm worker`` and ``rpm bridge``)."""
    from rpm_core.settings import Settings

    settings = Settings.from_env()
    if args.kafka_url:
        settings = replace(settings, kafka_url=args.kafka_url)
        settings.validate()
    return settings.kafka_bootstrap()


def _selection(args: argparse.Namespace) -> Selection:
    from stream.deadletter_tools import Selection

    return Selection(stage=args.stage, reason=args.reason, since=args.since, offsets=args.offsets)


# --- rpm deadletter list ----------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    """Print the selected records and a summary; 0 unless Kafka cannot be read (2)."""
    from stream.deadletter_tools import DeadLetterToolError

    bootstrap = _bootstrap(args)
    try:
        return asyncio.run(_list(bootstrap, args))
    except DeadLetterToolError as exc:
        print(f"rpm deadletter: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `rpm deadletter list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _list(bootstrap: str, args: argparse.Namespace) -> int:
    from rpm_core import topics
    from stream.deadletter_tools import HEADER, DeadLetter, DeadLetterReader, ListReport, entry_line, payload_line
    from stream.deadletter_tools import selected_entries as select

    report, printed = ListReport(), 0
    async with DeadLetterReader(bootstrap) as reader:
        if not reader.deadletter_exists:
            print(f"{topics.DEADLETTER} does not exist on {bootstrap}: nothing was ever dead-lettered there",
                  file=sys.stderr)
            return 0
        if not args.json:
            print(HEADER)
        async for entry in select(reader, _selection(args), report):
            report.add(entry)
            if args.limit is not None and printed >= args.limit:
                continue
            printed += 1
            if args.json:
                print(orjson.dumps(entry.to_json(payload=args.payload)).decode())
            else:
                print(entry_line(entry))
                if args.payload and isinstance(entry, DeadLetter):
                    print(payload_line(entry))
    summary = report.lines()
    if printed < report.selected:
        summary.insert(0, f"(showing the first {printed} of {report.selected} selected)")
    print("\n".join(summary), file=sys.stderr if args.json else sys.stdout)
    return 0


# --- rpm deadletter replay --------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the selected records; print one line per record and a summary; exit 0, 1 or 2."""
    from stream.deadletter_tools import DeadLetterToolError, replay

    bootstrap = _bootstrap(args)
    try:
        report = asyncio.run(replay(bootstrap, _selection(args), dry_run=args.dry_run,
                                    on_entry=functools.partial(_print_outcome, dry_run=args.dry_run)))
    except DeadLetterToolError as exc:
        print(f"rpm deadletter: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return report.exit_status


def _print_outcome(entry: Entry, outcome: Outcome, *, dry_run: bool) -> None:
    from rpm_core import topics
    from stream.deadletter_tools import ReplayRecord, readings, shown

    offset = f"{entry.partition}:{entry.offset}" if entry.partition else str(entry.offset)
    if isinstance(outcome, ReplayRecord):
        verb = "would be replayed" if dry_run else "replayed"
        print(f"{offset:>8}  {verb} to {topics.READINGS} partition {outcome.partition} "
              f"({readings(outcome.readings)})")
    else:
        print(f"{offset:>8}  not replayable: {shown(outcome.why)}")
