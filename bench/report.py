#!/usr/bin/env python3
"""Render bench/work/results_*.json into bench/RESULTS.md, between the
``<!-- BEGIN MEASURED -->`` / ``<!-- END MEASURED -->`` markers (the text
around them is hand-written and kept)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, WORK, machine_info

BEGIN, END = "<!-- BEGIN MEASURED -->", "<!-- END MEASURED -->"


def _load(name: str) -> dict | None:  # type: ignore[type-arg]
    path = WORK / name
    return json.loads(path.read_text()) if path.exists() else None


def render() -> str:
    info = machine_info()
    lines = [
        "## Machine and versions",
        "",
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}, nproc {info['nproc']}; RAM {info['ram']}; kernel {info['kernel']}",
        f"- minipacs {info['minipacs']}; Python {info['python']}; DCMTK `{info['dcmtk']}`",
        "",
    ]
    store = _load("results_store.json")
    if store and "machine" in store:
        from bench_store import markdown

        m = store["machine"]
        lines += [
            f"## C-STORE throughput (`bench_store.py`, {store['rounds']} rounds, order rotated each round)",
            "",
            f"Run {m['date']}, load average {m['loadavg']} at the start, {' '.join(store['loadavg_end'])} at the end;"
            f" minipacs from {m['source']}; {m['orthanc']}.",
            "",
            markdown(store),
            "",
        ]
    mem = _load("results_memory.json")
    if mem:
        lines += [
            f"## Memory: one {mem['file_bytes'] / 2**20:.0f} MiB instance",
            "",
            "| server | transfer s | MiB/s | RSS before MiB | max sampled VmRSS MiB (50 ms) | VmHWM MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for target in ("minipacs", "storescp"):
            m = mem.get(target)
            if m:
                lines.append(
                    f"| {target} | {m['seconds']:.2f} | {m['mib_per_s']:.0f} | {m['rss_before_mb']:.1f} | "
                    f"{m['rss_max_sampled_mb']:.1f} | {m['vmhwm_mb']:.1f} |"
                )
        m = mem["minipacs"]
        lines += [
            "",
            f"- target peak RSS < 150 MB: {'MET' if mem['target_met'] else 'MISSED'} "
            f"(minipacs VmHWM {m['vmhwm_mb'] * 2**20 / 1e6:.1f} MB)",
            "",
        ]
    stow = _load("results_memory_stow.json")
    if stow:
        lines += [
            f"## STOW-RS in, WADO-RS and C-GET out: one {stow['file_bytes'] / 2**20:.0f} MiB instance",
            "",
            "| phase | s | MiB/s | server VmHWM after, MiB | echoscu meanwhile: n, median ms, max ms |",
            "|---|---:|---:|---:|---|",
        ]
        for phase in ("stow", "wado", "cget"):
            r = stow[phase]
            lines.append(
                f"| {phase} | {r['seconds']:.2f} | {r['mib_per_s']:.0f} | {r['vmhwm_mb']:.1f} | "
                f"{r['echoes']}, {r['echo_median_ms']:.0f}, {r['echo_max_ms']:.0f} |"
            )
        idle_echo = stow["idle"]
        lines += [
            "",
            f"- server RSS before {stow['rss_before_mb']:.1f} MiB (HTTP on); echoscu on the idle server: "
            f"median {idle_echo['echo_median_ms']:.0f} ms, max {idle_echo['echo_max_ms']:.0f} ms",
            f"- target peak RSS < 150 MB: {'MET' if stow['target_met'] else 'MISSED'} "
            f"(VmHWM {stow['vmhwm_mb'] * 2**20 / 1e6:.1f} MB)",
            "",
        ]
    idle = _load("results_idle.json")
    if idle:
        lines += [
            f"## Idle: {idle['associations']} open associations",
            "",
            f"- baseline, no association: {idle['baseline_cpu_s']:.2f} s CPU in {idle['baseline_seconds']:.1f} s "
            f"= {idle['baseline_pct_core']:.2f} % of a core",
            f"- {idle['associations']} idle associations: {idle['cpu_s']:.2f} s CPU in {idle['seconds']:.1f} s "
            f"= {idle['pct_core']:.2f} % of a core (CPU time resolution 10 ms, i.e. < 0.03 % here); "
            f"{idle['still_open']} still open at the end, {idle['released']} released cleanly; "
            f"server threads {idle['server_threads']}",
            f"- target < 2 % of a core: {'MET' if idle['target_met'] else 'MISSED'}",
            "",
        ]
    prof = _load("profile/small.json")
    if prof:
        lines += [
            f"## Profile, small set (py-spy, wall-clock samples, {prof['instances']} instances)",
            "",
            "Busy time per thread (py-spy slows the run; read the split, not the absolute numbers):",
            "",
        ]
        for thread, t in prof["threads"].items():
            lines.append(f"- {thread}: {t['busy_ms_per_instance']:.2f} ms busy per instance")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    target = BENCH / "RESULTS.md"
    text = target.read_text() if target.exists() else f"# minipacs benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    target.write_text(f"{head}{BEGIN}\n{render()}\n{END}{tail}")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
