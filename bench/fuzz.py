"""Fuzz every decoder of hostile bytes (issue 13, H1): frames, outcomes, crashes (must be 0), rate, memory.

    .venv/bin/python bench/fuzz.py [--frames 100000] [--seed N] [--only NAME] [--tracemalloc]

The frames are p2p.fuzzing's structure-aware mutations of valid encodings, through node.fuzzing's
targets (the same as tests/p2p/test_fuzz_decoders.py, which runs 10,000 each). Prints one line per
decoder: frames, how many decoded to a value, how many raised each allowed error, crashes, frames/s,
and the process's peak resident memory after it (or, with --tracemalloc, the peak of Python
allocations during that decoder alone, at about half the speed). Exit 1 when anything crashed, with
the first crashes and the seed to replay them.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.fuzzing import decoder_targets  # noqa: E402
from p2p.fuzzing import fuzz  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames per decoder")
    parser.add_argument("--seed", type=int, default=None, help="replay this seed (default: a new one)")
    parser.add_argument("--only", default=None, help="only decoders whose name contains this")
    parser.add_argument("--tracemalloc", action="store_true", help="peak Python allocations per decoder")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"seed {seed}, {args.frames:,} frames per decoder, Python {sys.version.split()[0]}")
    print(f"{'decoder':28} {'frames':>8} {'values':>7} {'errors (allowed)':>34} {'crashes':>7} "
          f"{'frames/s':>9} {'peak':>10}")
    total_frames = total_crashes = 0
    crashes = []
    started = time.perf_counter()
    with decoder_targets() as targets:
        for target in targets:
            if args.only and args.only not in target.name:
                continue
            if args.tracemalloc:
                tracemalloc.start()
            t0 = time.perf_counter()
            result = fuzz(target, args.frames, seed)
            elapsed = time.perf_counter() - t0
            if args.tracemalloc:
                peak = f"{tracemalloc.get_traced_memory()[1] / 2**20:.1f} MiB"
                tracemalloc.stop()
            else:
                peak = f"{peak_rss_mib():.0f} MiB rss"
            errors = ", ".join(f"{name} {count}" for name, count in sorted(result.errors.items())) or "-"
            print(f"{target.name:28} {result.frames:>8,} {result.values:>7,} {errors:>34} {len(result.crashes):>7} "
                  f"{result.frames / elapsed:>9,.0f} {peak:>10}", flush=True)
            total_frames += result.frames
            total_crashes += len(result.crashes)
            crashes += result.crashes
    elapsed = time.perf_counter() - started
    print(f"total: {total_frames:,} frames in {elapsed:.1f} s ({total_frames / elapsed:,.0f} frames/s), "
          f"{total_crashes} crashes, peak resident memory {peak_rss_mib():.0f} MiB")
    for crash in crashes[:10]:
        print(f"CRASH {crash}")
    if crashes:
        print(f"replay: .venv/bin/python bench/fuzz.py --seed {seed} --frames {args.frames}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
