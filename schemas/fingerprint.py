"""CRC-64-AVRO (Rabin) fingerprints, as the Avro specification defines them.

Used for the single-object encoding header ``C3 01`` + 8-byte little-endian fingerprint of the
writer schema's Parsing Canonical Form.
"""

from __future__ import annotations

EMPTY_64 = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY_64 & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """Return the 64-bit Rabin fingerprint of ``data`` (the canonical form's UTF-8 bytes).

    >>> hex(crc64_avro(b'"int"'))
    '0x7275d51a3f395c8f'
    """
    fp = EMPTY_64
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp
