"""The cost of a cache key: ``stat`` identity (path, size, mtime, ctime) vs a blake2b hash of the bytes.

    python -m benchmarks.bench_cache_key             # a 100 MB file, 5 repeats (median)
    python -m benchmarks.bench_cache_key --mb 400

Hashing is timed with the file in the page cache (its best case: a cold read adds the disk's time), so
the ratio printed is a lower bound on what hashing costs over ``stat``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import timeit
from pathlib import Path

from totalgen_eval.cache import file_identity


def blake2b_file(path: Path, chunk: int = 1 << 22) -> str:
    """blake2b of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _median_seconds(func, repeats: int) -> float:
    return statistics.median(timeit.repeat(func, number=1, repeat=repeats))


def run(mb: int = 100, repeats: int = 5) -> dict[str, float]:
    """Median seconds of one stat identity and one content hash of an ``mb`` MB file, and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "volume.bin"
        block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB of incompressible-looking bytes
        with open(path, "wb") as fh:
            for _ in range(mb):
                fh.write(block)
        blake2b_file(path)  # warm the page cache
        hash_s = _median_seconds(lambda: blake2b_file(path), repeats)
        stat_s = _median_seconds(lambda: [file_identity(path) for _ in range(1000)], repeats) / 1000
    return {"mb": mb, "hash_seconds": hash_s, "stat_seconds": stat_s, "hash_mb_per_s": mb / hash_s,
            "ratio_hash_over_stat": hash_s / stat_s}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    figures = run(args.mb, args.repeats)
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}, indent=1))
    return figures


if __name__ == "__main__":
    main()
