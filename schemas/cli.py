"""``skewscope schemas``: list the event schemas with their fingerprints."""

from __future__ import annotations

import argparse

from schemas.catalog import default_catalog


def _list(args: argparse.Namespace) -> int:
    catalog = default_catalog()
    for name in catalog.names():
        schema = catalog.reader(name)
        print(f"{name:<22} {schema.fingerprint_bytes.hex()}  {schema.full_name}")
    return 0


def add_schema_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("schemas", help="list event schemas and their CRC-64-AVRO fingerprints")
    parser.set_defaults(func=_list)
