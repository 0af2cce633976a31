"""Summarise a py-spy raw (collapsed) profile: samples per thread, then the functions with
the most self and inclusive samples (bench.py runs it for BENCH_PROFILE=py-spy).

    python bench/pyspy_top.py <py-spy raw output> [top N]
"""

import re
import sys
from collections import Counter


def main(path: str, top: int) -> None:
    threads, own, inclusive = Counter(), Counter(), Counter()
    total = 0
    for line in open(path, encoding="utf-8"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        thread = re.sub(r"\s*\(?0x[0-9a-f]+\)?", "", frames[0])
        threads[thread] += n
        names = [re.sub(r" \((.*?):\d+\)$", r" (\1)", f) for f in frames[1:]]
        if names:
            own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n
    print(f"\n{total} samples")
    for name, n in threads.most_common():
        print(f"  {n / total:6.1%}  {name}")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\ntop {top} by {title} samples")
        for name, n in counter.most_common(top):
            print(f"  {n / total:6.1%}  {name[:150]}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
