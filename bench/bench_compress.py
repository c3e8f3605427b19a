#!/usr/bin/env python3
"""Lossless compression of stored instances: ratio and time per instance (issue 13, "Storage policy").

The CT set of bench_store.py (``gen_data.store_sets()["ct"]``: 200 x 512x512x16-bit, explicit VR LE,
12-bit values drawn uniformly at random, i.e. noise: the worst case for any lossless coder) and, for a
ratio nearer real CT, a "phantom" set: a 512x512 disc of soft tissue (40 HU) with a bone ring (1000 HU)
in air (-1000 HU), plus Gaussian noise (sigma 12 HU), stored as 12-bit unsigned with intercept -1024.

Each set is imported into a fresh archive (SQLite, fsync on, as `minipacs serve` runs by default), then
compressed instance by instance by the code the "compress" job runs (core/compression.py ``Compressor``:
read, encode, decode again and compare, write + fsync the new copy, switch the row, keep the metadata).
Reported per syntax: instances, bytes before and after, ratio, wall ms per instance (median and mean),
the encode share, and the cost of sending a compressed instance to a peer that does not accept the
syntax (decode + re-encode to explicit VR LE by core/transcode.py, ms per instance).

    python bench/bench_compress.py [--count 200] [--phantom 50] [--syntaxes jpeg-ls-lossless,rle,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - puts this checkout's src/ first on sys.path
import numpy as np
from gen_data import CT_IMAGE_STORAGE, WORK, base_dataset, generate_kind, store_sets
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.compression import SYNTAXES, CompressionSettings, Compressor, Skip, encode
from minipacs.core.model import Origin
from minipacs.core.transcode import transcode


def phantom_set(folder: Path, count: int) -> list[Path]:
    """``count`` phantom CT slices (module docstring), written once."""
    files = sorted(folder.glob("*.dcm"))
    if len(files) == count:
        return files
    folder.mkdir(parents=True, exist_ok=True)
    for old in files:
        old.unlink()
    rng = np.random.default_rng(7)
    y, x = np.mgrid[-256:256, -256:256]
    radius = np.hypot(x, y)
    hu = np.where(radius < 200, 40.0, -1000.0)
    hu = np.where((radius > 180) & (radius < 200), 1000.0, hu)
    study, series = generate_uid(), generate_uid()
    base = base_dataset("CT", CT_IMAGE_STORAGE, 512, 512, study, series)
    for n in range(1, count + 1):
        noisy = hu + rng.normal(0, 12, hu.shape) * (radius < 200)
        stored = np.clip(np.rint(noisy + 1024), 0, 4095).astype(np.uint16)
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = str(n)
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
    return sorted(folder.glob("*.dcm"))


async def measure(files: list[Path], syntax: str, data_dir: Path) -> dict[str, float]:
    archive = await open_archive(Settings(data_dir=data_dir, fsync=True))
    try:
        for path in files:
            await archive.import_file(path, Origin("bench"))
        compressor = Compressor(archive, CompressionSettings(keep_replaced_seconds=0, fsync=True))
        target = SYNTAXES[syntax]
        walls: list[float] = []
        before = after = 0
        compressed: list[Path] = []
        candidates = [c async for page in compressor.candidates() for c in page]
        encode_s = 0.0
        skipped, reason = 0, ""
        for candidate in candidates[:5]:  # the encoder alone, on a few (it runs again inside compress)
            start = time.perf_counter()
            with contextlib.suppress(Skip):
                encode(archive.blobs.path_of(candidate.blob_key), target)
            encode_s += time.perf_counter() - start
        for candidate in candidates:
            start = time.perf_counter()
            outcome = await compressor.compress(candidate, target)
            walls.append(time.perf_counter() - start)
            if outcome.status == "skipped":
                skipped += 1
                reason = outcome.reason
            elif outcome.status != "compressed":
                raise SystemExit(f"{candidate.sop_instance_uid}: {outcome.status}: {outcome.reason}")
            before += outcome.before
            after += outcome.after
        for candidate in candidates[:10]:
            compressed.append(await archive.get_instance_path(candidate.sop_instance_uid))
        start = time.perf_counter()
        for path in compressed:
            transcode(path, ExplicitVRLittleEndian)
        transcode_ms = (time.perf_counter() - start) / len(compressed) * 1000 if not skipped else 0.0
        return {
            "instances": len(candidates),
            "before": before,
            "after": after,
            "ratio": before / after,
            "median_ms": statistics.median(walls) * 1000,
            "mean_ms": statistics.mean(walls) * 1000,
            "encode_ms": encode_s / min(5, len(candidates)) * 1000,
            "transcode_ms": transcode_ms,
            "instances_per_s": len(walls) / sum(walls),
            "skipped": skipped,
            "skip_reason": reason,
        }
    finally:
        await archive.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantom", type=int, default=50, help="phantom CT slices [50]; 0: none")
    ap.add_argument("--syntaxes", default=",".join(SYNTAXES), help="comma-separated [all three]")
    ap.add_argument("--json", type=Path, default=WORK / "results_compress.json")
    args = ap.parse_args(argv)
    folder, count, kind = store_sets()["ct"]
    generate_kind(folder, count, kind)
    sets = {f"bench_store ct ({count}, uniform 12-bit noise)": sorted(folder.rglob("*.dcm"))}
    if args.phantom:
        sets[f"phantom ct ({args.phantom})"] = phantom_set(WORK / f"compress-phantom-{args.phantom}", args.phantom)
    results = []
    for label, files in sets.items():
        for syntax in args.syntaxes.split(","):
            with tempfile.TemporaryDirectory(dir=WORK) as tmp:
                found = asyncio.run(measure(files, syntax, Path(tmp)))
            found.update(set=label, syntax=syntax)
            results.append(found)
            print(json.dumps(found), flush=True)
    args.json.write_text(json.dumps(results, indent=2))
    print()
    print(
        "| set | syntax | instances | MB before | MB after | ratio | ms/instance (median) | encode+check ms | "
        "instances/s | transcode ms | skipped |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['set']} | {r['syntax']} | {r['instances']} | {r['before'] / 1e6:.1f} | {r['after'] / 1e6:.1f} "
            f"| {r['ratio']:.2f} | {r['median_ms']:.1f} | {r['encode_ms']:.1f} | {r['instances_per_s']:.1f} "
            f"| {r['transcode_ms']:.1f} | {r['skipped']} {r['skip_reason']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
