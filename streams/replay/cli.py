"""``skewscope backtest``: replay topic history or a capture file through the detector core,
score against labels, write JSON and an HTML report.

    skewscope backtest --from 2026-09-21T10:00:00Z --to 1790000600000 --json bt.json --html bt.html
    skewscope backtest --file run.avro [--labels labels.jsonl] --json bt.json --html bt.html
    ... --runbook A.toml --compare B.toml      # both configurations on the same history

Register with ``add_backtest_commands(subparsers)``; ``python -m streams.replay.cli`` runs it
standalone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from models.scoring import GRACE_NS
from skewscope.config import Settings, load_settings
from streams.replay.backtest import RunResult, evaluate, labels_in_span
from streams.replay.capture import CaptureReader
from streams.replay.config import Configuration, load_configuration
from streams.replay.history import HistoryReader, parse_time_ms, read_topic
from streams.replay.labels import decode_labels, read_labels
from streams.replay.message import RawMessage
from streams.replay.parallel import default_workers, make_replayer
from streams.replay.progress import Progress
from streams.replay.report import render_report

Opened = tuple[Iterable[RawMessage], Callable[[], float | None]]


def add_backtest_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``backtest``."""
    p = sub.add_parser(
        "backtest",
        help="replay history or a capture through the detector and score it",
        description="Replay telemetry topics between two broker timestamps (no consumer "
        "group, nothing committed) or a capture file through the same detector core as the "
        "live worker; score verdicts against fault labels; write JSON and an HTML report.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--from", dest="from_time", help="start: ISO-8601 or epoch ms")
    what.add_argument("--file", type=Path, help="capture file (Avro container) to replay")
    p.add_argument(
        "--to",
        dest="to_time",
        help="end (exclusive): ISO-8601 or epoch ms (default: the topics' current end)",
    )
    p.add_argument(
        "--topics",
        nargs="+",
        default=None,
        help="telemetry topics to replay (default: every telemetry topic)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels file (JSON lines or Avro of FaultLabel); default: the labels "
        "topic (history, labels overlapping the replayed span) or the capture's",
    )
    p.add_argument(
        "--runbook",
        type=Path,
        default=None,
        help="runbook TOML (may hold a [detector] table); default: built-in",
    )
    p.add_argument("--detector", type=Path, default=None, help="detector settings TOML")
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="second runbook TOML (configuration B) run on the same messages",
    )
    p.add_argument(
        "--compare-detector",
        type=Path,
        default=None,
        help="detector settings TOML for configuration B",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results JSON here")
    p.add_argument("--html", type=Path, default=None, help="write the HTML report here")
    p.add_argument(
        "--features",
        action="store_true",
        help="emit FeatureWindows for full timelines in the report (slower)",
    )
    p.add_argument(
        "--flush",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="close open windows at the end (default: yes for a capture, no for "
        "history, as the live worker never flushes)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions to spread a capture over (default: telemetry_partitions)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes to run the partitions' detectors in (default: one per core, at "
        "most one per partition; 1 runs everything in this process); the result is the "
        "same for any number",
    )
    p.add_argument(
        "--grace-s",
        type=float,
        default=GRACE_NS / 1e9,
        help="scoring grace after a label's end, seconds (default 5)",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="progress bar on stderr even when it is not a terminal",
    )
    p.set_defaults(func=_backtest)


def _configs(args: argparse.Namespace) -> list[Configuration]:
    out = [load_configuration("A", args.runbook, args.detector, args.features)]
    if args.compare is not None:
        out.append(load_configuration("B", args.compare, args.compare_detector, args.features))
    elif args.compare_detector is not None:
        raise ValueError("--compare-detector needs --compare RUNBOOK")
    return out


def _opener(args: argparse.Namespace, settings: Settings) -> tuple[Callable[[], Opened], dict]:
    if args.file is not None:
        partitions = args.partitions or settings.telemetry_partitions

        def open_capture() -> Opened:
            reader = CaptureReader(args.file, partitions)
            return reader, lambda: reader.fraction_read

        return open_capture, {"capture": str(args.file), "partitions": partitions}
    from_ms = parse_time_ms(args.from_time)
    to_ms = parse_time_ms(args.to_time) if args.to_time else None
    topics = args.topics or list(settings.topics.telemetry())

    def open_history() -> Opened:
        topology = read_topic(settings, settings.topics.topology, to_ms)
        reader = HistoryReader(settings, topics, from_ms, to_ms)
        return (
            itertools.chain(topology, reader),
            lambda: reader.read / reader.total if reader.total else None,
        )

    source = {
        "bootstrap": settings.kafka_bootstrap,
        "from_ms": from_ms,
        "to_ms": to_ms,
        "topics": topics,
    }
    return open_history, source


def run_backtest(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Replay every configuration; returns the JSON document (and writes the outputs)."""
    configs = _configs(args)
    opener, source = _opener(args, settings)
    flush = args.flush if args.flush is not None else args.file is not None
    show = args.progress or sys.stderr.isatty()
    grace_ns = args.grace_s * 1e9
    results: list[RunResult] = []
    partitions = source.get("partitions", settings.telemetry_partitions)
    workers = args.workers or default_workers(partitions)
    for config in configs:
        replayer = make_replayer(config, settings.topics, workers, Progress(config.name, show))
        messages, fraction = opener()  # after the workers fork: no Kafka thread is forked
        results.append(replayer.run(messages, flush=flush, fraction=fraction))
    labels = _labels(args, settings, results[0])
    docs = [evaluate(r, labels, grace_ns) for r in results]
    source["flush"] = flush
    document = {"source": source, "labels": labels, "runs": docs}
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=1, default=_bytes_hex))
    if args.html is not None:
        args.html.write_text(
            render_report(source, list(zip(results, docs, strict=True)), labels, grace_ns)
        )
    return document


def _labels(args: argparse.Namespace, settings: Settings, run: RunResult) -> list[dict]:
    if args.labels is not None:
        return read_labels(args.labels)
    if args.file is not None:
        return run.labels
    found = decode_labels(read_topic(settings, settings.topics.labels))
    return labels_in_span(found, run.stats.event_first_ns, run.stats.event_last_ns)


def _bytes_hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def summary_lines(document: dict[str, Any]) -> list[str]:
    lines = []
    for doc in document["runs"]:
        speed, stats = doc["speed"], doc["stats"]
        scored = {
            cid: c
            for cid, c in doc["evaluation"]["conditions"].items()
            if c["labels"] or c["episodes"]
        }
        f1 = ", ".join(f"{cid} F1 {c['f1']}" for cid, c in scored.items()) or "nothing scored"
        lines.append(
            f"{doc['config']['name']}: {stats['frames']} frames, {stats['samples']} samples "
            f"in {speed['wall_s']:.2f} s = {speed['samples_per_s']} samples/s, "
            f"{speed['x_real_time']}x real time; {len(doc['episodes'])} verdict episodes, "
            f"{stats['bad_messages']} bad messages; {f1}"
        )
    return lines


def _backtest(args: argparse.Namespace) -> int:
    settings = load_settings(Path(args.config) if args.config else None)
    if args.file is None and args.to_time is None and args.from_time is None:
        raise ValueError("give --from T0 [--to T1] or --file CAPTURE")
    document = run_backtest(args, settings)
    for line in summary_lines(document):
        print(line)
    for out in (args.json, args.html):
        if out is not None:
            print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (until ``skewscope`` registers the command)."""
    parser = argparse.ArgumentParser(prog="skewscope")
    parser.add_argument("--config", help="TOML settings file (table [skewscope])")
    sub = parser.add_subparsers(dest="command", required=True)
    add_backtest_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"skewscope backtest: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
