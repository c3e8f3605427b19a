#!/usr/bin/env python3
"""Before/after on one machine in one run: two minipacs source trees and storescp, rounds interleaved.

On a shared, loaded machine two benchmark runs minutes apart are not comparable; rounds that
alternate A, B and storescp (order rotated each round) are. Each round is bench_store.py's
``run_one`` (fresh server, /usr/bin/storescu +sd +r, one association per source folder).

  python bench/ab_store.py --a /path/to/old/src --b src [--set small] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, remove_runs, run_folder, stop_all
from bench_store import SETS, load_set, run_one


def _use(src: Path) -> None:
    """Start the next minipacs from ``src`` (bench/_common.py passes PYTHONPATH to the server)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and not p.endswith("/src")]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(src), *rest])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="the 'before' src/ folder")
    ap.add_argument("--b", type=Path, required=True, help="the 'after' src/ folder")
    ap.add_argument("--set", default="small", choices=sorted(SETS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--no-storescp", action="store_true")
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"{info['date']}; {info['cpu']} x {info['nproc']}; load {info['loadavg']}", flush=True)
    data = load_set(args.set, quick=False)
    targets = [("A", args.a.resolve()), ("B", args.b.resolve())]
    if not args.no_storescp:
        targets.append(("storescp", Path()))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in targets}
    try:
        for rnd in range(args.rounds):
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for name, src in order:
                server = "storescp" if name == "storescp" else "minipacs"
                if server == "minipacs":
                    _use(src)
                run = run_one(server, data, run_folder(f"ab-{name}-{rnd}"), rnd)
                results[name].append(run)
                print(
                    f"round {rnd} {name:8s} {run['per_s']:7.1f}/s  server CPU {run['cpu_ms_per_instance']:.3f} ms/inst",
                    flush=True,
                )
    finally:
        stop_all()
        remove_runs()
    print()
    for name, runs in results.items():
        rates = [r["per_s"] for r in runs]
        cpu = [r["cpu_ms_per_instance"] for r in runs]
        print(
            f"{name:8s} median {statistics.median(rates):7.1f}/s ({min(rates):.0f}-{max(rates):.0f}); "
            f"CPU median {statistics.median(cpu):.3f} ms/inst ({min(cpu):.3f}-{max(cpu):.3f})"
        )
    a, b = results["A"], results["B"]
    ratios = [rb["per_s"] / ra["per_s"] for ra, rb in zip(a, b, strict=True)]
    cpu_ratios = [rb["cpu_ms_per_instance"] / ra["cpu_ms_per_instance"] for ra, rb in zip(a, b, strict=True)]
    print(f"B/A rate per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
    print(
        f"B/A CPU per round:  {', '.join(f'{r:.2f}' for r in cpu_ratios)}; median {statistics.median(cpu_ratios):.2f}"
    )
    if "storescp" in results:
        scp = results["storescp"]
        for name in ("A", "B"):
            rel = [r["per_s"] / s["per_s"] for r, s in zip(results[name], scp, strict=True)]
            print(
                f"{name}/storescp per round: {', '.join(f'{r:.2f}' for r in rel)}; median {statistics.median(rel):.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
