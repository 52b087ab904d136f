"""Run the foundation benchmarks in turn and write bench/results/<name>.json (`make bench`).

    python -m bench.run_all                      # catalog_scale (1M, 10M) and orchestration (10k)
    python -m bench.run_all orchestration        # just one
"""

from __future__ import annotations

import sys

from bench import catalog_scale, orchestration

BENCHMARKS = {"catalog_scale": catalog_scale.main, "orchestration": orchestration.main}


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmarks {sorted(unknown)}; known: {sorted(BENCHMARKS)}")
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        BENCHMARKS[name]([])


if __name__ == "__main__":
    main()
