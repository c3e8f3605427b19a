"""Differential fuzzer of the ingest checks against DCMTK and pydicom (not part of the test suite).

Run from the repository root::

    PYTHONPATH=src:. python tools/fuzz_ingest.py [--seed N] [--count N] [--no-pydicom-seeds]

Issue 10's "never store a broken dataset" means: a dataset ingest accepts is one its readers read,
and the index holds what they read. This takes well-formed datasets -- the good kinds of
``tests/broken_corpus.py`` in explicit and implicit VR, big endian and an encapsulated syntax,
and pydicom's test files that pass the walk -- mutates them (bit flips, 16- and 32-bit fields set
to 0, 2, 0xFFFF, 0xFFFFFFFF or random values, truncation, insertion, deletion and duplication of
slices) and puts each through what ingest runs before it stores anything: the structure walk
(core/structure.py ``walk_bytes``) and the header read (dicom/header.py ``read_header_bytes``).
Then it asks DCMTK's ``dcmdump`` (``/usr/bin/dcmdump -q +E``) and pydicom (a full read, every value
decoded) the same question, and compares each header attribute the index keeps with pydicom's.

It prints the counts of (our verdict, DCMTK's verdict) and, per kind, the first findings:

- ``crash``: our walk or header read raised something other than MalformedDataset (a defect);
- ``accepted-dcmtk-fails``: we would store what DCMTK cannot read (a defect of issue 10);
- ``accepted-pydicom-fails``: we would store what pydicom cannot read (our metadata, frames and
  transcodings read with pydicom: usually a defect);
- ``header-differs-from-pydicom``: the index would hold another value than the file's (a defect
  unless the value is garbage both ways: bytes outside the repertoire, NULs inside text);
- ``refused-dcmtk-reads``: we refuse what DCMTK reads (a stricter choice, documented in the README:
  an invalid explicit VR, attributes out of order, lengths running past the end).

Session 12 ran ~22,000 datasets and fixed the four defects it found (README "Never a broken
dataset"). The exit status is 1 when a crash or an accepted-dcmtk-fails finding is left.
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import struct
import subprocess
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_files
from pydicom.filereader import read_file_meta_info

from minipacs.core.staging import file_meta_information
from minipacs.core.structure import encapsulates, walk_bytes
from minipacs.dicom.header import HEADER_ATTRIBUTES, MalformedDataset, dataset_encoding, read_header_bytes
from minipacs.dicom.part10 import dataset_offset_of
from tests.broken_corpus import BIG, ENCAPSULATED, EXPLICIT, IMPLICIT, Encoder, content, encapsulated, head, pixels
from tests.dicomgen import CT_IMAGE_STORAGE

DCMDUMP = "/usr/bin/dcmdump"


@dataclass(frozen=True)
class Seed:
    name: str
    syntax: str  # transfer syntax UID
    dataset: bytes


def corpus_seeds() -> list[Seed]:
    out = []
    for syntax in (EXPLICIT, IMPLICIT, BIG):
        e = Encoder(syntax)
        for defined_sq, defined_items in ((True, True), (False, False), (True, False), (False, True)):
            body = head(e, "1.2.3.4") + content(e, defined_sq=defined_sq, defined_items=defined_items) + pixels(e)
            out.append(Seed(syntax.name, syntax.uid, body))
    e = Encoder(ENCAPSULATED)
    fragment = b"\xff\xd8" + bytes(60) + b"\xff\xd9"
    out.append(Seed(ENCAPSULATED.name, ENCAPSULATED.uid, head(e, "1.2.3.4") + content(e) + encapsulated(e, [fragment])))
    return out


def pydicom_seeds(max_bytes: int = 300_000) -> list[Seed]:
    """pydicom's Part 10 test files that are not deflated and pass the walk."""
    out = []
    for name in get_testdata_files():
        path = Path(name)
        try:
            if path.stat().st_size > max_bytes:
                continue
            offset = dataset_offset_of(path)
            syntax = str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
        except Exception:  # noqa: BLE001 - not a Part 10 file
            continue
        enc = dataset_encoding(syntax)
        if not syntax or enc.deflated:
            continue
        data = path.read_bytes()[offset:]
        try:
            walk_bytes(b"x" + data, 1, **_options(syntax))
        except MalformedDataset:
            continue
        out.append(Seed(path.name, syntax, data))
    return out


def _options(syntax: str) -> dict[str, object]:
    enc = dataset_encoding(syntax)
    return {
        "implicit": enc.implicit_vr,
        "little_endian": enc.little_endian,
        "max_depth": 32,
        "encapsulated": encapsulates(syntax),
    }


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) < 16:
        return bytes(b) + b"\x00" * 4
    kind = rng.randrange(7)
    if kind == 0:
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        at = rng.randrange(0, len(b) - 2) & ~1
        b[at : at + 2] = struct.pack("<H", rng.choice([0, 1, 2, 0xFFFF, rng.randrange(65536)]))
    elif kind == 2:
        at = rng.randrange(0, len(b) - 4) & ~1
        value = rng.choice([0, 0xFFFFFFFF, 2, 4, 8, rng.randrange(1 << 32), rng.randrange(256)])
        b[at : at + 4] = struct.pack(rng.choice("<>") + "I", value)
    elif kind == 3:
        del b[rng.randrange(len(b)) :]
    elif kind == 4:
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8])))
    elif kind == 5:
        at = rng.randrange(len(b))
        del b[at : at + rng.choice([1, 2, 4, 8, 12])]
    else:
        at = rng.randrange(len(b))
        end = min(len(b), at + rng.randrange(1, 40))
        b[end:end] = b[at:end]
    return bytes(b)


def dcmtk_reads(path: Path) -> tuple[bool, str]:
    run = subprocess.run([DCMDUMP, "-q", "+E", str(path)], capture_output=True, text=True, errors="replace")
    said = run.stderr or ""
    return run.returncode == 0 and "E:" not in said and "F:" not in said, said.strip()[:300]


def pydicom_header(data: bytes) -> dict[str, str]:
    """The header attributes as pydicom reads them (every value decoded on the way); raises what it raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))

        def visit(dataset: pydicom.Dataset) -> None:
            for element in dataset:
                if element.VR == "SQ":
                    for item in element.value:
                        visit(item)
                else:
                    _ = element.value

        visit(ds)
        out = {}
        for keyword, (tag, _vr) in HEADER_ATTRIBUTES.items():
            element = ds.get(tag)
            if element is None or element.value is None or element.value == "":
                out[keyword] = ""
            elif element.VM > 1:
                out[keyword] = "\\".join(str(v) for v in element.value)
            else:
                out[keyword] = str(element.value)
        return out


def same(vr: str, ours: str, theirs: str) -> bool:
    if vr in ("US", "IS"):
        try:
            return (ours == theirs == "") or int(float(ours)) == int(float(theirs))
        except ValueError:
            pass
    return ours.strip() == theirs.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--no-pydicom-seeds", action="store_true")
    args = ap.parse_args(argv)
    if not Path(DCMDUMP).exists():
        print(f"{DCMDUMP} is missing: apt-get install dcmtk", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    seeds = corpus_seeds() + ([] if args.no_pydicom_seeds else pydicom_seeds())
    print(f"{len(seeds)} seeds, {args.count} mutants", flush=True)
    counts: collections.Counter[tuple[str, bool]] = collections.Counter()
    findings: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutant.dcm"
        for _ in range(args.count):
            seed = rng.choice(seeds)
            dataset = seed.dataset
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                dataset = mutate(rng, dataset)
            meta = file_meta_information(CT_IMAGE_STORAGE, "1.2.3.4", seed.syntax)
            data = meta + dataset
            path.write_bytes(data)
            ours, why, header = "accepted", "", None
            try:
                walk_bytes(data, len(meta), **_options(seed.syntax))
                header = read_header_bytes(data, len(meta), seed.syntax)
            except MalformedDataset as exc:
                ours, why = "refused", str(exc)
            except Exception as exc:  # noqa: BLE001 - what this looks for
                ours, why = "crash", f"{exc!r} {traceback.format_exc()[-300:]}"
                findings["crash"].append((seed.name, why))
            dcmtk_ok, dcmtk_said = dcmtk_reads(path)
            counts[(ours, dcmtk_ok)] += 1
            if ours == "refused" and dcmtk_ok:
                findings["refused-dcmtk-reads"].append((seed.name, why))
            if ours != "accepted":
                continue
            if not dcmtk_ok:
                findings["accepted-dcmtk-fails"].append((seed.name, dcmtk_said))
                continue
            try:
                theirs = pydicom_header(data)
            except Exception as exc:  # noqa: BLE001 - what this looks for
                findings["accepted-pydicom-fails"].append((seed.name, repr(exc)[:200]))
                continue
            assert header is not None
            for keyword, (_tag, vr) in HEADER_ATTRIBUTES.items():
                if keyword != "SpecificCharacterSet" and not same(vr, header.get(keyword), theirs[keyword]):
                    said = f"{keyword}: ours {header.get(keyword)!r}, pydicom {theirs[keyword]!r}"
                    findings["header-differs-from-pydicom"].append((seed.name, said))
    print({f"{ours}/dcmtk {'reads' if ok else 'fails'}": n for (ours, ok), n in sorted(counts.items())})
    for kind, found in findings.items():
        print(f"== {kind}: {len(found)}")
        shown: set[str] = set()
        for name, said in found:
            if (key := name + said[:50]) not in shown and len(shown) < 12:
                shown.add(key)
                print(f"   {name}: {said}")
    return 1 if findings.get("crash") or findings.get("accepted-dcmtk-fails") else 0


if __name__ == "__main__":
    sys.exit(main())
