"""Word statistics over a job's inputs: a small, honest Python workload for a Suanli sandbox.

Reads every text file under the inputs folder (default /io/in; this script itself is left out),
and writes to the outputs folder (default /io/out):

- report.json: per file its lines, words, bytes and sha256; totals; the top words overall;
- top_words.csv: word,count for the top words (most frequent first, then alphabetical).

A file that is not UTF-8 text is listed under "skipped" with the reason. Standard library only.

    python3 /io/in/wordstats.py [--inputs DIR] [--outputs DIR] [--top N]
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import json
import os
import re
import sys

WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def file_stats(data: bytes) -> tuple[dict[str, object], collections.Counter[str]]:
    text = data.decode("utf-8")  # UnicodeDecodeError: not text
    words = words_of(text)
    stats = {"bytes": len(data), "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
             "words": len(words), "sha256": hashlib.sha256(data).hexdigest()}
    return stats, collections.Counter(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", default="/io/in")
    parser.add_argument("--outputs", default="/io/out")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    me = os.path.realpath(__file__)
    files: dict[str, dict[str, object]] = {}
    skipped: dict[str, str] = {}
    total: collections.Counter[str] = collections.Counter()
    for folder, dirs, names in os.walk(args.inputs):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, args.inputs)
            if os.path.realpath(path) == me or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            try:
                stats, counts = file_stats(data)
            except UnicodeDecodeError as exc:
                skipped[rel] = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                continue
            files[rel] = stats
            total.update(counts)
            print(f"{rel}: {stats['lines']} lines, {stats['words']} words, {stats['bytes']} bytes", flush=True)
    lines = sum(int(str(s["lines"])) for s in files.values())
    size = sum(int(str(s["bytes"])) for s in files.values())
    top = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:args.top]
    report = {
        "files": files, "skipped": skipped,
        "totals": {"files": len(files), "lines": lines, "words": sum(total.values()), "bytes": size,
                   "distinct_words": len(total)},
        "top_words": [{"word": w, "count": c} for w, c in top],
    }
    os.makedirs(args.outputs, exist_ok=True)
    with open(os.path.join(args.outputs, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(args.outputs, "top_words.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["word", "count"])
        writer.writerows(top)
    t = report["totals"]
    print(f"total: {t['files']} files, {t['lines']} lines, {t['words']} words, {t['bytes']} bytes, "
          f"{t['distinct_words']} distinct words; wrote report.json and top_words.csv", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
