"""The suite's validity report as one JSON object: every gate per task x variant, with its figure,
threshold and verdict, and the scores (true and shuffled labels, default and tuned) behind them.

    python benchmarks/suite_validity.py                      # the default suite, all default variants
    python benchmarks/suite_validity.py --task hopper --variant clean --markdown report.md

Tuned settings and datasets are cached (``$MPO_DISCOVER_CACHE``), so a second run only re-scores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from evaluators.suite import DEFAULT_TASKS, DEFAULT_VARIANTS, check, report_json, report_markdown


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", action="append", help="task (repeatable; default: the default suite)")
    ap.add_argument("--variant", action="append", help="variant (repeatable; default clean, noisy:0.2, mixed)")
    ap.add_argument("--markdown", help="also write the Markdown report here")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    reports = check(tuple(args.task or DEFAULT_TASKS), tuple(args.variant or DEFAULT_VARIANTS),
                    on_event=lambda msg: print(msg, file=sys.stderr, flush=True))
    out = {**report_json(reports), "seconds": time.perf_counter() - start, "machine": platform.machine(),
           "processor": platform.processor() or platform.machine()}
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report_markdown(reports) + "\n")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
