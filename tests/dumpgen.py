"""A fast stand-in for a database dump: ``python tests/dumpgen.py BYTES`` writes that many
bytes of numbered SQL-like lines to standard output (compressible as a dump is, different
in every megabyte, and the same on every run)."""

from __future__ import annotations

import sys

BLOCK = 1 << 20


BLOCKS = 16  # distinct megabytes, repeated further apart than zstd -3 looks back


def block(number: int) -> bytes:
    """The ``number``-th distinct megabyte of the output."""
    first = number * 30_000
    lines = b"".join(b"INSERT INTO t VALUES (%d, %d, 'customer %x', %d.%02d);\n"
                     % (i, (i * 7919) % 100_003, i * 2654435761 % 2**32, i % 9973, i % 100)
                     for i in range(first, first + 30_000))
    return lines[:BLOCK]


def main(size: int) -> None:
    out = sys.stdout.buffer
    blocks = [block(n) for n in range(BLOCKS)]
    number = 0
    while size > 0:
        # the block's number at its start keeps every megabyte distinct, cheaply
        data = (b"-- block %012d\n" % number + blocks[number % BLOCKS])[:min(BLOCK, size)]
        out.write(data)
        size -= len(data)
        number += 1
    out.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]))
