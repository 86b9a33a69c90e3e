"""A stand-in for the multi-threaded external program a task hands its work to (FFmpeg in the blog).

Hashes ``--rounds`` chained SHA-256 passes over ``--megabytes`` of data in each of ``--threads``
threads; hashlib releases the GIL on large buffers, so the threads really run in parallel.
Prints one hex digest. Standard library only, so the image needs nothing extra.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor

CHUNK = 1 << 20


def digest_of_lane(lane: int, megabytes: int, rounds: int) -> bytes:
    block = hashlib.sha256(f"lane-{lane}".encode()).digest() * (CHUNK // 32)
    state = b""
    for _ in range(rounds):
        hasher = hashlib.sha256(state)
        for _ in range(megabytes):
            hasher.update(block)
        state = hasher.digest()
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--megabytes", type=int, default=64, help="data hashed per thread and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    for name in ("threads", "megabytes", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        lanes = pool.map(lambda lane: digest_of_lane(lane, args.megabytes, args.rounds), range(args.threads))
        combined = hashlib.sha256(b"".join(lanes)).hexdigest()
    print(combined)
    return 0


if __name__ == "__main__":
    sys.exit(main())
