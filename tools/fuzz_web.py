"""Fuzzing the HTTP edge (REST, DICOMweb, the UI) and the HL7 v2 receiver with hostile or malformed input.

Not part of the test suite (pytest collects ``tests/`` only). Run from the repository root:

    PYTHONPATH=src:. python tools/fuzz_web.py MODE N SEED [ROUTE_REGEX]

MODE is one of

- ``routes``: N mutated requests on every declared route (``web/routing.py declared``) of the whole app
  (``bootstrap.build_app``: registry, jobs, anonymizer), in process through httpx's ASGI transport: odd path
  segments (``..``, ``%2F``, NUL, very long UIDs), QIDO/REST/WADO query parameters (wildcards, ranges,
  ``1e400``, repeated keys, invalid percent-encodings), Accept/Range/If-None-Match/Host headers, JSON, form
  and multipart bodies. ROUTE_REGEX limits the routes. The routes that call other nodes (echo, query,
  retrieve, send, doctor, diagnostics check) are left out: nothing leaves 127.0.0.1.
- ``json``: N valid JSON bodies of the control API with one or two leaves (or member names) replaced by
  hostile JSON (unpaired surrogates, 1e400, 5000 digits, wrong types), then the listings read back.
- ``stow``: N STOW-RS / upload bodies: multipart with missing, duplicated or long boundaries, parts without
  headers, other part types, nested multiparts, truncated bodies, Part 10 files with damaged lengths.
- ``parsers``: the pure parsers called directly: the multipart parser fed in one piece and in random pieces
  (the events must be the same), Accept negotiation, frame lists, HL7 escapes (N inputs each).
- ``hl7``: N mutated ORM/OMG/ADT messages through the HL7 receiver (``hl7/adt.py HL7Receiver``): MSH-1/MSH-2
  variants, escapes, repetitions, bytes invalid in MSH-18; each must get an ACK with MSA.
- ``raw``: N raw HTTP/1.1 requests over loopback to a real uvicorn server (start_http) and N/3 MLLP streams
  to a real listener: broken framing, Content-Length and chunked bodies, odd methods and versions.

Flagged: any HTTP 500 (or other 5xx but 501/502/503/507), an exception out of the app, a request slower than
3 s, a log record at ERROR or above (tracebacks), an HL7 message without MSA, a complete request or frame
that got no answer. Each distinct problem is printed once with the input that caused it.
"""

# A fuzzer catches everything an input can raise (that is what it reports), and its inputs are long literals.
# ruff: noqa: BLE001, E501

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import random
import re
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.parse import quote

import httpx
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid

from minipacs.bootstrap import anonymizer, build_app, open_archive, outbound
from minipacs.config import Settings
from minipacs.core.corrections import Corrections
from minipacs.core.metadata import MetadataStore
from minipacs.core.worklist import Worklist
from minipacs.hl7.adt import HL7Receiver
from minipacs.hl7.message import Encoding, escape, unescape
from minipacs.hl7.mllp import MLLPServer
from minipacs.web.accept import frame_choice, instance_syntax, metadata_media_type, parse_accept
from minipacs.web.app import create_app
from minipacs.web.bulkdata import frame_numbers
from minipacs.web.errors import HttpError
from minipacs.web.multipart import MultipartParser, PartStart
from minipacs.web.routing import declared
from minipacs.web.server import start_http
from minipacs.web.transfer import boundary_of
from minipacs.web.types import AppContext
from tests.dicomgen import make_ct
from tests.hl7.samples import OMG, orm
from tests.worklist_data import entry

# ---------------------------------------------------------------- routes

logs = []


class H(logging.Handler):
    def emit(self, rec):
        if rec.levelno >= logging.ERROR:
            logs.append(
                (
                    rec.name,
                    rec.getMessage()[:200],
                    "".join(traceback.format_exception(*rec.exc_info)) if rec.exc_info else "",
                )
            )


def part10(**kw):
    out = io.BytesIO()
    make_ct(**kw).save_as(out, enforce_file_format=True)
    return out.getvalue()


WEIRD = [
    "",
    "*",
    "?",
    "**",
    "*?*?",
    "-",
    "--",
    "20240101-20230101",
    "20240101-",
    "-20240101",
    "2024",
    "20241301",
    "20240230",
    "1-3",
    "0",
    "-1",
    "1,,2",
    ",",
    "1,",
    "99999999999999999999",
    "1e400",
    "nan",
    "inf",
    "²",
    "٣",
    "1" * 5000,
    "x" * 10000,
    "\x00",
    "a\x00b",
    "\x01\x1f\x7f",
    "%00",
    "%ff",
    "%c3%28",
    "%ed%a0%80",
    "%",
    "%zz",
    "..",
    "../..",
    "%2F",
    "%2e%2e",
    "a/b",
    "1.2.840..1",
    "1.2.3.",
    ".1",
    "1." * 40 + "1",
    "Doe^John",
    "Doe*",
    "=",
    "\\",
    "\\\\",
    "a\\b",
    "'",
    '"',
    "' OR 1=1 --",
    "true",
    "false",
    "all",
    "ALL",
    "none",
    "TRUE",
    "yes",
    "00100010",
    "0010,0010",
    "PatientName",
    "(0010,0010)",
    "ffffffff",
    "7FE00010",
    "7fe00010",
    "00081115/0/00081199",
    "00081115/99999/0020000D",
    "x.y",
    "CT",
    "CT\\MR",
    "DOE^*",
    "\u2028",
    "é",
    "🙂",
    " ",
    "  1 ",
    "+1",
    "1.0",
    "0x10",
    "-0",
    "000000000000000000001",
    "1-",
    "1-0",
    "bytes=0-",
    "19700101120000.000000+2500",
    "1234567890.1",
    "null",
    "[]",
    "{}",
    "1/0/00100010",
    "20240101-20240101-20240101",
    "2024-01-01",
    "12:00",
    "120000-110000",
    "250000",
]
KEYS = [
    "limit",
    "offset",
    "includefield",
    "fuzzymatching",
    "accept",
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "00100010",
    "0020000D",
    "00080020",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesNumber",
    "InstanceNumber",
    "PatientBirthDate",
    "00081030",
    "ScheduledProcedureStepSequence.Modality",
    "00400275.00401001",
    "NumberOfStudyRelatedInstances",
    "requestType",
    "studyUID",
    "seriesUID",
    "objectUID",
    "contentType",
    "transferSyntax",
    "frameNumber",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
    "annotation",
    "charset",
    "anonymize",
    "since",
    "until",
    "patient",
    "study",
    "user",
    "target",
    "q",
    "state",
    "kind",
    "level",
    "node",
    "rule",
    "next",
    "value",
    "window",
    "viewport",
    "quality",
    "id",
    "open",
    "type",
    "syntax",
    "output",
    "dry_run",
    "keys",
    "host",
    "page",
    "sort",
    "expand",
    "full",
    "\x00",
    "",
    "a b",
    "PatientName.x",
    "0010001",
    "GGGG0010",
    "includefield.x",
    "ae",
    "status",
    "from",
    "to",
    "count",
    "uids",
]
ACCEPTS = [
    "*/*",
    "",
    "application/dicom",
    "application/dicom+json",
    "application/json",
    "application/dicom+xml",
    'multipart/related; type="application/dicom"',
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50',
    "application/octet-stream",
    "image/jpeg",
    "image/png",
    "image/gif",
    "text/html",
    "image/*",
    "multipart/*",
    "*/*;q=0",
    "*/*;q=nan",
    "application/dicom;q=1e400",
    "application/dicom;q=-1",
    'multipart/related; type="',
    'multipart/related; type=""; transfer-syntax=""',
    "a" * 10000,
    ";;;,,,;",
    "application/dicom; transfer-syntax=1.2.840.10008.1.2",
    "multipart/related; type=application/dicom+xml",
    'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70',
    "text/plain",
    "application/zip",
    "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.2",
    "image/jls",
    "image/jp2",
    "video/mp4",
    "application/dicom, application/dicom+json;q=0.5",
    "*/*; charset=utf-16",
    "application/dicom+json; charset=ISO-8859-1",
    "image/jpeg;q=0.5, image/png;q=0.9",
    "\x7f",
    "é",
]
RANGES = [
    "bytes=0-0",
    "bytes=0-",
    "bytes=-1",
    "bytes=-0",
    "bytes=5-1",
    "bytes=999999999999999999-",
    "bytes=0-999999999999999999",
    "bytes=1-2,3-4",
    "bytes=",
    "bytes=--1",
    "items=0-1",
    "bytes=-",
    "bytes=00000000000000000000000001-2",
    "bytes=0-1 ",
]


class Fuzzer:
    def __init__(self, client, uids, rng):
        self.client, self.uids, self.rng = client, uids, rng

    def val(self):
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(WEIRD)
        if r < 0.6:
            return self.rng.choice(self.uids["study"] + self.uids["series"] + self.uids["sop"])
        if r < 0.8:
            return self.rng.choice(WEIRD) + self.rng.choice(WEIRD)
        return "".join(self.rng.choice("*?-\\^=,.0123456789a%/ \x00") for _ in range(self.rng.randint(1, 30)))

    def param(self, name):
        r = self.rng.random()
        if name == "study":
            pool = self.uids["study"]
        elif name == "series":
            pool = self.uids["series"]
        elif name in ("instance", "id", "uid"):
            pool = self.uids["sop"] + self.uids["study"]
        elif name == "level":
            pool = ["studies", "series", "instances", "patients", "studies", "x", ""]
        elif name == "frames":
            pool = ["1", "1,1", "2", "1-3", "1,,2", "0", "-1", "999999999999999999", "1," * 5000, "01", "1 "]
        elif name == "tag":
            pool = ["7FE00010", "00100010", "00081115/0/00081150", "00081115/99/00081150", "7fe00010", "zzzz"]
        else:
            pool = ["x", "AE1"]
        return self.rng.choice(pool) if r < 0.7 else self.val()

    def url(self, template):
        def sub(m):
            v = self.param(m.group(1))
            return (
                v
                if self.rng.random() < 0.3
                else httpx.URL("http://x/").copy_with(path="/" + v).raw_path.decode()[1:]
                if "/" not in v
                else v
            )

        path = re.sub(r"\{(\w+)\}", lambda m: self._enc(self.param(m.group(1))), template)
        return path

    def _enc(self, v):
        if self.rng.random() < 0.3:
            return (
                v.replace("/", "%2F").replace("\x00", "%00").replace(" ", "%20").replace("?", "%3F").replace("#", "%23")
            )
        return quote(v, safe="")

    def query(self):
        parts = []
        for _ in range(self.rng.randint(0, 5)):
            k = self.rng.choice(KEYS)
            v = self.val()
            if self.rng.random() < 0.3:
                parts.append(
                    k + "=" + v.replace("&", "%26").replace("#", "%23").replace(" ", "+").replace("\x00", "%00")
                )
            else:
                parts.append(quote(k, safe="") + "=" + quote(v, safe="%" if self.rng.random() < 0.5 else ""))
        return "&".join(parts)

    def headers(self):
        h = {}
        if self.rng.random() < 0.6:
            h["accept"] = self.rng.choice(ACCEPTS)
        if self.rng.random() < 0.2:
            h["range"] = self.rng.choice(RANGES)
        if self.rng.random() < 0.15:
            h["if-none-match"] = self.rng.choice(['"x"', "*", 'W/"1"', "", '"' * 100])
        if self.rng.random() < 0.1:
            h["if-modified-since"] = self.rng.choice(["Mon, 01 Jan 2024 00:00:00 GMT", "garbage", "0"])
        if self.rng.random() < 0.1:
            h["host"] = self.rng.choice(["x:-1", "[::1", "a" * 300, "x:99999", "", "x:0", "é"])
        return h

    def body(self):
        r = self.rng.random()
        if r < 0.5:
            obj = self.rng.choice(
                [
                    {},
                    [],
                    None,
                    1,
                    "x",
                    {"changes": {}},
                    {"changes": {"PatientName": "A"}},
                    {"name": "r", "match": {}, "send_to": "x"},
                    {"ae_title": "X", "host": "127.0.0.1", "port": 104},
                    {"study": "1.2"},
                    {"source": "1", "target": "2"},
                    {"uids": ["1"]},
                    {"keys": {"PatientName": "*"}},
                    {"level": "STUDY"},
                    {"labels": ["a"]},
                ]
            )
            if isinstance(obj, dict) and self.rng.random() < 0.7:
                for _ in range(self.rng.randint(1, 3)):
                    obj[
                        self.rng.choice(
                            [
                                "changes",
                                "name",
                                "port",
                                "host",
                                "ae_title",
                                "match",
                                "study",
                                "uids",
                                "keys",
                                "level",
                                "node",
                                "PatientName",
                                "x",
                                "keep_original",
                                "dry_run",
                                "options",
                            ]
                        )
                    ] = self.rng.choice(
                        [
                            self.val(),
                            "A",
                            "x",
                            1e308,
                            -1,
                            10**30,
                            [],
                            {},
                            None,
                            True,
                            [self.val()],
                            {self.val(): self.val()},
                            {"PatientName": self.val()},
                        ]
                    )
            raw = json.dumps(obj)
            if self.rng.random() < 0.4:
                raw = raw.replace(
                    '"A"',
                    self.rng.choice(['"\\ud800"', '"a\\udfff"', "1e400", "-1e400", '"\\u0000"', "1E999", '"\\u2028"']),
                ).replace("1e+308", self.rng.choice(["1e400", "-1e400", "1e999", "0.1e-400"]))
                raw = raw.replace('"x"', self.rng.choice(['"\\ud800"', "1e400", '"\\u0000"', "[1e400]"]))
            return raw.encode(), "application/json"
        if r < 0.6:
            return bytes(self.rng.randrange(256) for _ in range(self.rng.randint(0, 200))), self.rng.choice(
                ["application/json", "application/dicom", "text/plain", ""]
            )
        if r < 0.75:
            from urllib.parse import quote

            pairs = "&".join(
                self.rng.choice(["username", "password", "next", "csrf", "csrf_token", "changes", "x", ""])
                + "="
                + self.rng.choice([quote(self.val()), self.val().replace("&", ""), "%ff%fe", "%", "a" * 5000])
                for _ in range(self.rng.randint(0, 4))
            )
            return pairs.encode("utf-8", "surrogateescape"), self.rng.choice(
                [
                    "application/x-www-form-urlencoded",
                    "application/x-www-form-urlencoded; charset=utf-16",
                    "application/x-www-form-urlencoded; charset=bogus",
                ]
            )
        if r < 0.85:
            b = self.rng.choice(["F", "x" * 100, "a b"])
            part = f'--{b}\r\nContent-Disposition: form-data; name="{self.rng.choice(["file", "files", "x", "username", "next"])}"; filename="{self.rng.choice(["a.dcm", "../../x", "", "a.zip", "é"])}"\r\nContent-Type: {self.rng.choice(["application/dicom", "application/zip", "application/octet-stream", ""])}\r\n\r\n'.encode()
            body = (
                part
                + bytes(self.rng.randrange(256) for _ in range(self.rng.randint(0, 300)))
                + f"\r\n--{b}--\r\n".encode()
            )
            if self.rng.random() < 0.3:
                body = body[: self.rng.randrange(len(body) + 1)]
            return body, self.rng.choice(
                [
                    f"multipart/form-data; boundary={b}",
                    "multipart/form-data",
                    f'multipart/form-data; boundary="{b}"',
                    f"multipart/form-data; boundary={b}x",
                ]
            )
        return None, None


async def fuzz_routes(n, seed, routes_filter=None):
    tmp = Path(tempfile.mkdtemp())
    full = True
    config = Settings(data_dir=tmp / "data", fsync=False)
    if full:
        whole = await build_app(config)
        archive = whole.archive
        md = MetadataStore(archive)
        md.attach()
        app = create_app(
            AppContext(
                config,
                archive,
                md,
                whole.nodes,
                jobs=whole.jobs,
                outbound=outbound(config, archive),
                anonymizer=anonymizer(config, archive),
                metrics=whole.metrics,
            )
        )
    else:
        archive = await open_archive(config)
        md = MetadataStore(archive)
        md.attach()
        app = create_app(AppContext(config, archive, md))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555), raise_app_exceptions=True)
    uids = {"study": [], "series": [], "sop": []}
    found = {}
    status_counts = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
        for ts in (None, ImplicitVRLittleEndian):
            st, se, so = generate_uid(), generate_uid(), generate_uid()
            kw = dict(study_uid=st, series_uid=se, sop_uid=so)
            if ts:
                kw["transfer_syntax"] = ts
            b = "BOUND"
            body = (
                f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + part10(**kw)
                + f"\r\n--{b}--\r\n".encode()
            )
            r = await client.post(
                "/dicom-web/studies",
                content=body,
                headers={"content-type": f'multipart/related; type="application/dicom"; boundary={b}'},
            )
            assert r.status_code == 200, r.text
            uids["study"].append(st)
            uids["series"].append(se)
            uids["sop"].append(so)
        routes = [(sorted(getattr(r, "methods", None) or ["GET"]), p) for p, r in declared(app.routes)]
        routes = [
            (m, p)
            for m, p in routes
            if "logout" not in p
            and not re.search(r"echo|query$|retrieve$|/send$|doctor|check$", p)
            and (routes_filter is None or re.search(routes_filter, p))
        ]
        rng = random.Random(seed)
        fz = Fuzzer(client, uids, rng)
        for _i in range(n):
            methods, template = rng.choice(routes)
            method = rng.choice([m for m in methods if m != "HEAD" or rng.random() < 0.3] or ["GET"])
            if method == "DELETE" and rng.random() < 0.8:
                continue  # keep data around
            path = fz.url(template)
            q = fz.query()
            url = path + ("?" + q if q else "")
            headers = fz.headers()
            content = None
            if method in ("POST", "PUT"):
                content, ct = fz.body()
                if ct is not None:
                    headers["content-type"] = ct
            logs.clear()
            t = time.monotonic()
            try:
                r = await asyncio.wait_for(client.request(method, url, headers=headers, content=content), 20)
                status = r.status_code
            except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError, httpx.RemoteProtocolError):
                continue
            except Exception as e:
                status = "EXC " + type(e).__name__ + ": " + str(e)[:100]
                found.setdefault(
                    f"{method} {template} {status}", (url, headers, content, traceback.format_exc()[-3000:])
                )
            dt = time.monotonic() - t
            status_counts[status] = status_counts.get(status, 0) + 1
            if status == 500 or (
                isinstance(status, int) and status >= 500 and status != 503 and status != 501 and status != 502
            ):
                found.setdefault(
                    f"{method} {template} {status}",
                    (url, headers, content, r.text[:500] + "\n" + "\n".join(x[2][-2500:] for x in logs)),
                )
            if dt > 3:
                found.setdefault(f"SLOW {method} {template}", (url, headers, content, dt))
            for name, msg, tb in logs:
                found.setdefault(f"LOG {template} {name} {msg[:80]}", (url, headers, content, tb[-2500:]))
    await md.close()
    if full:
        await whole.close()
    else:
        await archive.close()
    return found, status_counts


# ---------------------------------------------------------------- json

HOSTILE = [
    '"\\ud800"',
    '"a\\udfffb"',
    "1e400",
    "-1e400",
    "1e-400",
    '"\\u0000"',
    '"x\\u0000y"',
    '"\\u2028"',
    '""',
    '" "',
    "null",
    "true",
    "0",
    "-1",
    "99999999999999999999999999",
    "1" * 5000,
    "1.5",
    "[]",
    "{}",
    "[[]]",
    "[null]",
    "[1e400]",
    '["\\ud800"]',
    '{"": 1}',
    '{"\\ud800": 1}',
    '"' + "x" * 70000 + '"',
    '"*"',
    '"?"',
    '"..\\/..\\/etc"',
    '"1.2..3"',
    '"Doe^John^A^B^C^D"',
    '"\\\\"',
    '"=\\u0000"',
    '"CT\\\\MR"',
    '"20241399"',
    '"-"',
    '"http://[::1"',
    '"file:///etc/passwd"',
    '"\\u00e9"',
    '"\\ufffe"',
    '"\\udbff\\udfff"',
    '"1e400"',
    '"nan"',
    '"inf"',
    '"²"',
]


def walk(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


MARK = "@@HOSTILE{}@@"


def mutate_json(rng, body):
    b = copy.deepcopy(body)
    paths = [p for p in walk(b) if p]
    subs = []
    for n in range(rng.randint(1, 2)):
        if not paths:
            break
        p = rng.choice(paths)
        parent = b
        try:
            for k in p[:-1]:
                parent = parent[k]
            mark = MARK.format(n)
            if rng.random() < 0.15 and isinstance(parent, dict):
                parent[rng.choice(["\ud800", "", "x" * 300, "00100010", "vr", "Value"])] = mark
            else:
                parent[p[-1]] = mark
            subs.append((mark, rng.choice(HOSTILE)))
        except (KeyError, IndexError, TypeError):
            pass
    raw = json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass")
    for mark, h in subs:
        raw = raw.replace(('"' + mark + '"').encode(), h.encode())
    return raw


async def fuzz_json(n, seed):
    tmp = Path(tempfile.mkdtemp())
    config = Settings(data_dir=tmp / "data", fsync=False)
    whole = await build_app(config)
    archive = whole.archive
    md = MetadataStore(archive)
    md.attach()
    app = create_app(
        AppContext(
            config,
            archive,
            md,
            whole.nodes,
            jobs=whole.jobs,
            outbound=outbound(config, archive),
            anonymizer=anonymizer(config, archive),
            metrics=whole.metrics,
        )
    )
    rng = random.Random(seed)
    found = {}
    counts = {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 5555)), base_url="http://t", timeout=30
    ) as c:
        st, se, so = generate_uid(), generate_uid(), generate_uid()
        b = (
            b"--B\r\nContent-Type: application/dicom\r\n\r\n"
            + part10(study_uid=st, series_uid=se, sop_uid=so, patient_id="P1")
            + b"\r\n--B--\r\n"
        )
        assert (
            await c.post("/dicom-web/studies", content=b, headers={"content-type": "multipart/related; boundary=B"})
        ).status_code == 200
        r = await c.post("/api/nodes", json={"ae_title": "AI_NODE", "host": "127.0.0.1", "port": 9})
        assert r.status_code in (200, 201), r.text
        node_id = r.json().get("id", "AI_NODE")
        wl = entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000").to_json_dict()
        templates = [
            (
                "POST",
                "/api/rules",
                {
                    "name": "r1",
                    "when": "stable",
                    "stable_seconds": 30,
                    "level": "series",
                    "match": {"Modality": ["CT", "MR"], "StudyDate": "20240101-20241231"},
                    "calling_aet": "CT*",
                    "send_to": ["AI_NODE"],
                    "stow_to": ["http://127.0.0.1:9/dicom-web"],
                },
            ),
            (
                "PUT",
                "/api/rules/r1",
                {
                    "name": "r1",
                    "when": "stable",
                    "stable_seconds": 30,
                    "level": "series",
                    "match": {"Modality": "CT"},
                    "send_to": ["AI_NODE"],
                },
            ),
            (
                "POST",
                "/api/nodes",
                {
                    "ae_title": "N2",
                    "host": "127.0.0.1",
                    "port": 104,
                    "description": "x",
                    "permissions": ["echo", "find"],
                },
            ),
            (
                "PUT",
                f"/api/nodes/{node_id}",
                {"description": "the other PACS", "permissions": ["echo", "find"], "port": 105},
            ),
            ("POST", "/api/worklist", wl),
            ("POST", "/api/worklist", {"dataset": wl}),
            (
                "POST",
                "/api/patients/P1/modify",
                {"changes": {"PatientName": "Doe^Jane", "PatientBirthDate": "19700101"}},
            ),
            ("POST", f"/api/studies/{st}/modify", {"changes": {"StudyDescription": "x", "AccessionNumber": "A1"}}),
            ("POST", f"/api/series/{se}/modify", {"changes": {"SeriesDescription": "x", "SeriesNumber": "3"}}),
            ("POST", "/api/patients/merge", {"source": "P1", "target": "P2"}),
            ("POST", f"/api/series/{se}/move", {"study": st}),
            ("POST", "/api/storage/compress", {"study_uids": [st], "policy": "ct"}),
            (
                "POST",
                f"/api/studies/{st}/anonymize",
                {"options": ["retain-safe-private"], "keep_original": True, "output": "zip"},
            ),
            ("POST", "/api/patients/P1/anonymize", {"keep_original": True}),
            ("POST", "/api/send", {"node": node_id, "level": "series", "uids": [se]}),
            ("POST", "/api/retention/run", {"dry_run": True}),
            ("PUT", f"/api/studies/{st}/labels/lab1", {}),
        ]
        for i in range(n):
            method, url, body = rng.choice(templates)
            raw = mutate_json(rng, body)
            logs.clear()
            t = time.monotonic()
            try:
                r = await c.request(method, url, content=raw, headers={"content-type": "application/json"})
                status = r.status_code
            except Exception as e:
                status = "EXC " + type(e).__name__
                found.setdefault(f"{url} {status} {str(e)[:80]}", (raw[:400], traceback.format_exc()[-2500:]))
            counts[(url.split("/")[2], status)] = counts.get((url.split("/")[2], status), 0) + 1
            if status == 500 or (isinstance(status, int) and status > 500 and status != 503):
                found.setdefault(
                    f"{url} {status}", (raw[:400], r.text[:300] + "\n" + "\n".join(x[2][-2500:] for x in logs))
                )
            if time.monotonic() - t > 3:
                found.setdefault(f"SLOW {url}", (raw[:300], time.monotonic() - t))
            for name, msg, tb in logs:
                found.setdefault(f"LOG {url} {name} {msg[:100]}", (raw[:400], tb[-2500:]))
            # read back lists after writes, with hostile data stored
            if i % 50 == 0:
                for u in [
                    "/api/rules",
                    "/api/nodes",
                    "/api/worklist",
                    "/api/corrections",
                    "/api/audit",
                    "/ui/worklist",
                    "/ui/rules",
                    "/ui/nodes",
                    "/api/labels",
                    "/ui/log",
                    "/dicom-web/studies",
                    "/api/studies",
                    "/ui/",
                    f"/ui/studies/{st}",
                ]:
                    logs.clear()
                    try:
                        r = await c.get(u)
                        s2 = r.status_code
                    except Exception as e:
                        s2 = "EXC"
                        found.setdefault(f"READBACK {u} EXC {type(e).__name__}", (b"", traceback.format_exc()[-2000:]))
                    if s2 == 500:
                        found.setdefault(
                            f"READBACK {u} 500", (b"", r.text[:300] + "\n".join(x[2][-2500:] for x in logs))
                        )
    await md.close()
    await whole.close()
    return found, counts


# ---------------------------------------------------------------- stow

CTS = [
    'multipart/related; type="application/dicom"; boundary={b}',
    "multipart/related; boundary={b}",
    'multipart/related; type=application/dicom; boundary="{b}"',
    "multipart/related; boundary={b}; boundary=other",
    'multipart/related; type="application/dicom+json"; boundary={b}',
    "multipart/related",
    "multipart/related; boundary=",
    'multipart/related; boundary=""',
    "multipart/related; boundary={b}; charset=utf-16",
    "multipart/related;boundary={b};type=",
    'multipart/related; type="application/dicom"; boundary={b}; q=0',
    "multipart/form-data; boundary={b}",
    "application/dicom",
    "MULTIPART/RELATED; BOUNDARY={b}",
    "multipart/related; boundary=" + "x" * 300,
    'multipart/related; type="application/dicom; boundary={b}"',
    "multipart/related; boundary={b}\x00",
]
PCTS = [
    "application/dicom",
    "",
    "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50",
    "application/dicom; transfer-syntax=",
    "application/dicom; charset=utf-8",
    "application/dicom+json",
    "text/plain",
    "multipart/related; boundary=inner",
    "application/octet-stream",
    "APPLICATION/DICOM",
    "application/dicomx",
    "application/dicom;;;",
]


def mutate_bytes(rng, data):
    d = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(len(d)) if d else 0
        r = rng.random()
        if r < 0.3 and d:
            d[pos] = rng.randrange(256)
        elif r < 0.5:
            del d[pos : pos + rng.randint(1, 64)]
        elif r < 0.7:
            d[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif r < 0.85 and len(d) > 140:
            # perturb a length field in the dataset region
            p = rng.randrange(132, len(d) - 4)
            d[p : p + 4] = rng.choice(
                [
                    b"\xff\xff\xff\xff",
                    b"\x00\x00\x00\x00",
                    b"\xfe\xff\x00\xe0",
                    b"\x10\x00\x00\x00",
                    b"\xff\x7f\x00\x00",
                ]
            )
        else:
            d = d[: rng.randrange(len(d) + 1)]
    return bytes(d)


async def fuzz_stow(n, seed):
    tmp = Path(tempfile.mkdtemp())
    config = Settings(data_dir=tmp / "data", fsync=False, max_upload_parts=20)
    archive = await open_archive(config)
    md = MetadataStore(archive)
    md.attach()
    app = create_app(AppContext(config, archive, md))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    rng = random.Random(seed)
    seeds = []
    for ts in (None, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        kw = dict(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
        if ts:
            kw["transfer_syntax"] = ts
        seeds.append(part10(**kw))
    found = {}
    counts = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
        for _i in range(n):
            b = rng.choice(["B", "----X", "a b", "x" * 70, "--", "é", "B" * 200])
            parts = []
            for _ in range(rng.randint(0, 4)):
                data = rng.choice(seeds)
                if rng.random() < 0.6:
                    data = mutate_bytes(rng, data)
                if rng.random() < 0.1:
                    data = b'{"00100010": {"vr": "PN"}}'
                if rng.random() < 0.05:
                    data = (
                        b"--inner\r\nContent-Type: application/dicom\r\n\r\n" + rng.choice(seeds) + b"\r\n--inner--\r\n"
                    )
                head = b""
                if rng.random() < 0.9:
                    head = b"Content-Type: " + rng.choice(PCTS).encode() + b"\r\n"
                if rng.random() < 0.1:
                    head += b"Content-Location: ../../etc\r\n"
                if rng.random() < 0.05:
                    head = b"Broken header\r\n"
                parts.append(b"--" + b.encode("latin-1") + b"\r\n" + head + b"\r\n" + data + b"\r\n")
            body = b"".join(parts) + b"--" + b.encode("latin-1") + b"--\r\n"
            if rng.random() < 0.2:
                body = body[: rng.randrange(len(body) + 1)]
            if rng.random() < 0.1:
                body = body.replace(b"\r\n", b"\n")
            ct = rng.choice(CTS).replace("{b}", b) if rng.random() < 0.5 else CTS[0].replace("{b}", b)
            url = rng.choice(
                [
                    "/dicom-web/studies",
                    "/dicom-web/studies",
                    "/dicom-web/studies/" + generate_uid(),
                    "/dicom-web/studies/1.2..3",
                    "/api/instances",
                ]
            )
            headers = {"content-type": ct}
            if url == "/api/instances" and rng.random() < 0.5:
                body = rng.choice(seeds)
                headers["content-type"] = rng.choice(
                    ["application/dicom", "application/zip", "application/octet-stream", ""]
                )
                if rng.random() < 0.7:
                    body = mutate_bytes(rng, body)
            logs.clear()
            t = time.monotonic()
            try:
                r = await client.post(url, content=body, headers=headers)
                st = r.status_code
            except (httpx.LocalProtocolError, UnicodeEncodeError):
                continue
            except Exception as e:
                st = "EXC " + type(e).__name__
                found.setdefault(st + str(e)[:80], (url, headers, body[:300], traceback.format_exc()[-2500:]))
            counts[st] = counts.get(st, 0) + 1
            if st == 500 or (isinstance(st, int) and st >= 500 and st not in (503, 507)):
                found.setdefault(
                    f"{url[:20]} {st} {r.text[:100]}",
                    (url, headers, body[:300], r.text[:500] + "\n".join(x[2][-2000:] for x in logs)),
                )
            if time.monotonic() - t > 3:
                found.setdefault("SLOW", (url, headers, body[:300], time.monotonic() - t))
            for name, msg, tb in logs:
                found.setdefault(f"LOG {name} {msg[:100]}", (url, headers, body[:300], tb[-2500:]))
    await md.close()
    await archive.close()
    return found, counts


# ---------------------------------------------------------------- parsers


def fuzz_parsers(n, seed):
    rng = random.Random(seed)
    problems = {}

    def note(kind, inp, exc):
        key = kind + ":" + type(exc).__name__ + ":" + str(exc)[:80]
        if key not in problems:
            problems[key] = (inp, traceback.format_exc()[-1500:])

    def run_parser(boundary, body, chunks):
        p = MultipartParser(boundary, 50)
        ev = []
        i = 0
        for c in chunks:
            ev += p.feed(body[i : i + c])
            i += c
        ev += p.feed(body[i:])
        p.close()
        # normalize: merge bytes
        out = []
        for e in ev:
            if isinstance(e, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += e
            elif isinstance(e, bytes):
                out.append(bytes(e))
            elif isinstance(e, PartStart):
                out.append(("S", tuple(sorted(e.headers.items()))))
            else:
                out.append("E")
        return out

    toks = [
        b"--",
        b"\r\n",
        b"\n",
        b"\r",
        b"--B",
        b"--B--",
        b"\r\n--B\r\n",
        b"\r\n--B--\r\n",
        b"Content-Type: application/dicom\r\n",
        b":",
        b" ",
        b"\t",
        b"\r\n\r\n",
        b"\x00",
        b"\xff",
        b"B",
        b"--BB",
        b"X" * 2000,
        b"Content-Type:\r\n",
        b" folded\r\n",
    ]
    n_mp = 0
    for _i in range(n):
        boundary = rng.choice(["B", "B" * 70, "a b", "--", "-", "\r\n", "x" * 200, "é", "B\x00"])
        parts = []
        for _ in range(rng.randint(0, 3)):
            parts.append(
                b"--"
                + boundary.encode("latin-1")
                + rng.choice([b"\r\n", b"  \r\n", b"\r\n"])
                + rng.choice([b"Content-Type: application/dicom\r\n", b"", b"X: y\r\n"])
                + b"\r\n"
                + bytes(rng.randrange(256) for _ in range(rng.randint(0, 50)))
                + b"\r\n"
            )
        body = rng.choice([b"", b"preamble\r\n"]) + b"".join(parts) + b"--" + boundary.encode("latin-1") + b"--\r\n"
        b = bytearray(body)
        for _ in range(rng.randint(0, 4)):
            pos = rng.randint(0, len(b))
            r = rng.random()
            if r < 0.5:
                b[pos:pos] = rng.choice(toks)
            elif r < 0.8:
                del b[pos : pos + rng.randint(1, 10)]
            elif b:
                b[min(pos, len(b) - 1)] = rng.randrange(256)
        body = bytes(b)
        chunks = [rng.randint(1, 20) for _ in range(rng.randint(0, 10))]
        n_mp += 1
        r1 = r2 = None
        try:
            r1 = run_parser(boundary, body, [])
        except HttpError as e:
            r1 = ("err", e.status)
        except Exception as e:
            note("multipart", (boundary, body), e)
        try:
            r2 = run_parser(boundary, body, chunks)
        except HttpError as e:
            r2 = ("err", e.status)
        except Exception as e:
            note("multipart-chunked", (boundary, body, chunks), e)
        if r1 is not None and r2 is not None and r1 != r2:
            problems.setdefault(
                "multipart differential " + str(len(problems)), ((boundary, body, chunks), f"{r1!r}\n{r2!r}")
            )

    # Accept
    atoks = [
        "*/*",
        "application/dicom",
        "multipart/related",
        ";",
        ",",
        "=",
        '"',
        "q=",
        "q=0",
        "q=1e400",
        "q=nan",
        "q=-0",
        "type=",
        "transfer-syntax=",
        "*",
        "1.2.840.10008.1.2.1",
        "image/jpeg",
        "application/octet-stream",
        " ",
        "\x00",
        "image/*",
        "application/*",
        "multipart/*",
        "\\",
    ]
    for _i in range(n):
        h = "".join(rng.choice(atoks) for _ in range(rng.randint(0, 12)))
        try:
            rs = parse_accept(h)
            for ts in (
                "1.2.840.10008.1.2.1",
                "1.2.840.10008.1.2",
                "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.5",
                "1.2.3",
                "",
                "1.2.840.10008.1.2.2",
            ):
                frame_choice(rs, ts)
                instance_syntax(rs, ts)
            metadata_media_type(rs)
        except Exception as e:
            note("accept", h, e)
        try:
            boundary_of("multipart/related;" + h)
        except HttpError:
            pass
        except Exception as e:
            note("boundary", h, e)
    # frames
    for _i in range(n):
        s = "".join(
            rng.choice(["1", "0", ",", "-", "9" * 30, " ", "²", "+", "٣", "\x00"]) for _ in range(rng.randint(0, 8))
        )
        try:
            frame_numbers(s)
        except HttpError:
            pass
        except Exception as e:
            note("frames", s, e)
    # HL7 unescape with random encodings
    for _i in range(n):
        chars = rng.sample("|^~\\&#!$%*", 5)
        enc = Encoding(chars[0], chars[1], chars[2], rng.choice([chars[3], ""]), chars[4])
        t = "".join(
            rng.choice(
                [
                    "\\",
                    chars[3],
                    "X",
                    "0",
                    "F",
                    "E",
                    "S",
                    ".br",
                    ".sp",
                    "Z",
                    "C",
                    "M",
                    "H",
                    "a",
                    "ff",
                    "C3",
                    "A9",
                    " ",
                    "+5",
                    "in",
                ]
            )
            for _ in range(rng.randint(0, 12))
        )
        try:
            unescape(t, enc, rng.choice(["latin-1", "utf-8", "ascii", "iso8859_5"]))
            if enc.escape:
                rt = unescape(escape(t, enc), enc)
                if rt != t.replace("\r", "\n") and "\r" not in t and "\n" not in t:
                    problems.setdefault("roundtrip " + repr(t)[:30], (t, rt))
        except Exception as e:
            note("unescape", (t, enc), e)
    print("inputs: multipart", n_mp, "accept/frames", n, "unescape", n)
    return problems, {}


# ---------------------------------------------------------------- hl7


def ADT(ev, rest=""):
    return f"MSH|^~\\&|HIS|HOSP|MINIPACS|RAD|20261206101500||ADT^{ev}^ADT_A39|CTL{ev}|P|2.5\rEVN|{ev}|20261206101500\rPID|1||P1^^^HOSP^MR||Doe^John||19700101|M\r{rest}"


seeds = [
    orm().encode(),
    OMG.encode(),
    ADT("A08").encode(),
    ADT("A40", "MRG|P2^^^HOSP^MR\r").encode(),
    ADT("A31").encode(),
    ADT("A47", "MRG|P2^^^HOSP^MR\r").encode(),
    orm("CA").encode(),
    orm("XO").encode(),
]
tokens = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\\X\\",
    b"\\X0\\",
    b"\\XZZ\\",
    b"\\E\\",
    b"\\F\\",
    b"\\S\\",
    b"\\T\\",
    b"\\R\\",
    b"\\.br\\",
    b"\\.sp\\",
    b"\\.sp 99999999999999999999\\",
    b"\\H\\",
    b"\\Zfoo\\",
    b"\\C2842\\",
    b"\\M284244\\",
    b"\\X00\\",
    b"\\XC3\\",
    b"\\XFFFE\\",
    b"\\",
    b"\\\\",
    b"*",
    b"?",
    b'""',
    b"A" * 300,
    b"~" * 2000,
    b"^" * 500,
    b"&" * 500,
    b"MSH|^~\\&|",
    b"PID|",
    b"MRG|",
    b"OBR|",
    b"ORC|",
    b"\x0b",
    b"\x1c",
    b"\x1c\r",
    b"-1",
    b"99999999999999999999999",
    b"20241301",
    b"2024",
    b"0",
    b"\xe2\x80\xa8",
    b"\xed\xa0\x80",
    b"ZZZ",
    b"MSH",
    b"UNICODE UTF-8",
    b"8859/1",
    b"ISO IR87",
    b"ADT^A08",
    b"ADT^A40",
    b"ORM^O01",
    b"ACK",
    b"OMI^O23",
    b"\t",
    b" ",
    b"%",
    b"\\X0D0A\\",
    b"1.2.3..4",
    b"1." * 40,
]


def mutate(rng, data):
    d = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randint(0, len(d))
        if op < 0.35:
            d[pos:pos] = rng.choice(tokens)
        elif op < 0.55 and d:
            n = rng.randint(1, 20)
            del d[pos : pos + n]
        elif op < 0.7 and d:
            d[min(pos, len(d) - 1)] = rng.randrange(256)
        elif op < 0.8:
            # duplicate a segment
            segs = bytes(d).split(b"\r")
            i = rng.randrange(len(segs))
            segs.insert(i, segs[i])
            d = bytearray(b"\r".join(segs))
        elif op < 0.9:
            segs = bytes(d).split(b"\r")
            i = rng.randrange(len(segs))
            fs = segs[i].split(b"|")
            j = rng.randrange(len(fs))
            fs[j] = rng.choice(tokens) * rng.randint(1, 3)
            segs[i] = b"|".join(fs)
            d = bytearray(b"\r".join(segs))
        else:
            # change MSH-1/MSH-2
            if d.startswith(b"MSH"):
                new = bytes(rng.choice(b"|^~\\&#!$\x00 A\r") for _ in range(rng.randint(0, 7)))
                d[3:8] = new
    return bytes(d)


def mutate1(rng, data):
    segs = data.split(b"\r")
    i = rng.randrange(len(segs))
    fs = segs[i].split(b"|")
    if len(fs) > 2 and not (i == 0 and rng.random() < 0.8):
        j = rng.randrange(1, len(fs))
        comps = fs[j].split(b"^")
        k = rng.randrange(len(comps))
        comps[k] = rng.choice(tokens) if rng.random() < 0.7 else comps[k] + rng.choice(tokens)
        fs[j] = b"^".join(comps)
    segs[i] = b"|".join(fs)
    return b"\r".join(segs)


async def fuzz_hl7(n, seed):
    tmp = Path(tempfile.mkdtemp())
    archive = await open_archive(Settings(data_dir=tmp / "data", fsync=False))
    recv = HL7Receiver(Worklist(archive), Corrections(archive))
    rng = random.Random(seed)
    found = {}
    global codes
    codes = {}
    for i in range(n):
        base = rng.choice(seeds + [orm(accession=f"A{i}", pid3=f"P{i % 50}^^^HOSP^MR").encode()] * 6)
        data = mutate(rng, base) if rng.random() < 0.5 else mutate1(rng, base)
        logs.clear()
        t = time.monotonic()
        try:
            ack = await asyncio.wait_for(recv(data), 10)
            m = re.search(rb"MSA\|(\w\w)", ack)
            codes[m.group(1) if m else b"?"] = codes.get(m.group(1) if m else b"?", 0) + 1
            if b"MSA|" not in ack and b"MSA" not in ack:
                key = "noMSA"
                found.setdefault(key, (data, ack))
            if b"|AE|" in ack or b"AE" in ack[:0]:
                pass
            if b"207" in ack and b"could not apply" in ack:
                key = "AE207:" + ack.decode("utf-8", "replace").split("could not apply the message (")[1][:60]
                found.setdefault(key, (data, ack))
        except Exception as e:
            key = "EXC:" + type(e).__name__ + str(e)[:60]
            found.setdefault(key, (data, traceback.format_exc()))
        dt = time.monotonic() - t
        if dt > 2:
            found.setdefault("slow", (data, dt))
        for _, m, tb in logs:
            found.setdefault("LOG:" + m[:60] + str(tb)[-200:], (data, tb))
    await archive.close()
    return found, codes


# ---------------------------------------------------------------- raw


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


async def exchange(port, data, timeout=4.0):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        t = time.monotonic()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                if out:
                    break
                raise
            if not chunk:
                break
            out += chunk
        return out, time.monotonic() - t
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass


async def fuzz_raw(n, seed):
    tmp = Path(tempfile.mkdtemp())
    port = free_port()
    hport = free_port()
    config = Settings(data_dir=tmp / "data", fsync=False, http_port=port, http_header_timeout=2, http_body_timeout=2)
    archive = await open_archive(config)
    http = await start_http(config, archive, None)
    logging.getLogger("uvicorn.error").addHandler(H())
    mllp = MLLPServer(
        HL7Receiver(Worklist(archive), Corrections(archive)), host="127.0.0.1", port=hport, idle_timeout=3
    )
    await mllp.start()
    rng = random.Random(seed)
    st, se, so = generate_uid(), generate_uid(), generate_uid()
    dcm = part10(study_uid=st, series_uid=se, sop_uid=so)
    stow = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + dcm + b"\r\n--B--\r\n"
    r, _ = await exchange(
        port,
        b'POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: multipart/related; type="application/dicom"; boundary=B\r\nContent-Length: %d\r\n\r\n'
        % len(stow)
        + stow,
    )
    assert b" 200 " in r.split(b"\r\n")[0], r[:300]
    targets = [
        b"/dicom-web/studies",
        f"/dicom-web/studies/{st}/series/{se}/instances/{so}".encode(),
        f"/dicom-web/studies/{st}/series/{se}/instances/{so}/frames/1".encode(),
        f"/dicom-web/studies/{st}/metadata".encode(),
        b"/api/studies",
        f"/api/instances/{so}/file".encode(),
        b"/api/worklist",
        b"/api/rules",
        b"/ui/",
        b"/wado?requestType=WADO&studyUID=" + st.encode() + b"&seriesUID=" + se.encode() + b"&objectUID=" + so.encode(),
    ]
    found = {}
    counts = {}
    for _ in range(n):
        method = rng.choice(
            [
                b"GET",
                b"POST",
                b"PUT",
                b"HEAD",
                b"DELETE",
                b"OPTIONS",
                b"get",
                b"G\x00T",
                b"PATCH",
                b"CONNECT",
                b"TRACE",
                b"X" * 100,
            ]
        )
        target = rng.choice(targets)
        r = rng.random()
        if r < 0.2:
            target = target + rng.choice(
                [
                    b"/..",
                    b"%2F..%2F",
                    b"?a=%ff",
                    b"#frag",
                    b"/%00",
                    b"//",
                    b"?" + b"a=1&" * 2000,
                    b"/" + b"1." * 3000,
                    b"?\x7f",
                    b" x",
                ]
            )
        elif r < 0.25:
            target = rng.choice(
                [b"*", b"http://x/dicom-web/studies", b"", b"dicom-web", b"/" * 500, b"%", b"/\xff\xfe"]
            )
        version = rng.choice([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/1", b""])
        headers = [b"Host: x"] if rng.random() < 0.9 else []
        if rng.random() < 0.9:
            headers.append(b"Connection: close")
        body = b""
        if method in (b"POST", b"PUT") or rng.random() < 0.1:
            body = rng.choice([stow, b'{"a": 1}', b"", b"x" * 100000, stow[: len(stow) // 2]])
            headers.append(
                rng.choice(
                    [
                        b'Content-Type: multipart/related; type="application/dicom"; boundary=B',
                        b"Content-Type: application/json",
                        b"Content-Type: application/dicom",
                    ]
                )
            )
            cl = rng.choice(
                [
                    len(body),
                    len(body),
                    len(body) + 10,
                    max(0, len(body) - 10),
                    -1,
                    0,
                    "1e3",
                    "99999999999999999999999",
                    f" {len(body)}",
                    f"{len(body)}, {len(body)}",
                    "0x10",
                ]
            )
            te = rng.random()
            if te < 0.15:
                headers.append(b"Transfer-Encoding: chunked")
                chunked = b""
                for k in range(0, len(body), 7000):
                    chunked += b"%x\r\n" % len(body[k : k + 7000]) + body[k : k + 7000] + b"\r\n"
                body = chunked + rng.choice([b"0\r\n\r\n", b"0\r\n", b"", b"zz\r\n", b"fffffffffffffffffff\r\n"])
                if rng.random() < 0.3:
                    headers.append(b"Content-Length: %d" % len(body))
            else:
                headers.append(b"Content-Length: " + str(cl).encode())
        for _ in range(rng.randint(0, 3)):
            headers.append(
                rng.choice(
                    [
                        b"Accept: "
                        + rng.choice(
                            [
                                b"*/*",
                                b"application/dicom+json",
                                b'multipart/related; type="application/octet-stream"',
                                b"\xff\xfe",
                                b"a" * 9000,
                            ]
                        ),
                        b"Range: bytes=" + rng.choice([b"0-1", b"-5", b"5-1", b"999999999999999999999-"]),
                        b"If-None-Match: *",
                        b"Connection: close",
                        b"Connection: keep-alive, Upgrade",
                        b"Upgrade: websocket",
                        b"Expect: 100-continue",
                        b"Bad Header",
                        b": empty",
                        b"X:\x00",
                        b"Host: x:-1",
                        b"Host: a",
                        b"Host: [::1",
                        b"Cookie: " + b"a=b; " * 300,
                        b"Authorization: Basic !!!",
                        b"Authorization: Bearer " + b"x" * 5000,
                        b"Authorization: Basic " + __import__("base64").b64encode(b"\xff:\xff"),
                        b"Content-Type: multipart/related; boundary=" + b"B" * 300,
                        b"Origin: http://evil",
                        b"X-Forwarded-For: 1.2.3.4",
                        b"Accept-Encoding: gzip",
                    ]
                )
            )
        sep = rng.choice([b"\r\n"] * 9 + [b"\n"])
        head = method + b" " + target + b" " + version + sep + sep.join(headers) + sep + sep
        data = head + body
        if rng.random() < 0.1:
            data = data[: rng.randrange(len(data) + 1)]
        logs.clear()
        try:
            out, dt = await exchange(port, data)
        except TimeoutError:
            found.setdefault("TIMEOUT " + head[:60].decode("latin-1"), (data[:500], "no close within 8s"))
            continue
        except ConnectionResetError:
            out, dt = b"RESET", 0
        status = out.split(b"\r\n", 1)[0][:40]
        key = status.split(b" ")[1] if b" " in status else status[:20]
        counts[key] = counts.get(key, 0) + 1
        if not out or out == b"RESET":
            if len(data) >= len(head):  # a complete head should get an answer
                found.setdefault("NOANSWER " + head[:40].decode("latin-1") + " " + str(len(headers)), (data[:800], out))
        elif key.startswith(b"5") and key not in (b"503", b"507", b"501", b"505"):
            found.setdefault(
                "5xx " + key.decode() + " " + head[:50].decode("latin-1"),
                (data[:800], out[:800] + b"\n" + "\n".join(x[2][-2000:] for x in logs).encode()),
            )
        for name, msg, tb in logs:
            found.setdefault(f"LOG {name} {msg[:100]}", (data[:800], tb[-2500:]))
    # HL7 MLLP framing
    hcounts = {}
    for i in range(n // 3):
        msg = orm(accession=f"A{i}").encode()
        frames = []
        for _ in range(rng.randint(1, 3)):
            f = rng.choice(
                [
                    b"\x0b" + msg + b"\x1c\r",
                    b"\x0b" + msg + b"\x1c",
                    b"\x0b" + msg,
                    msg + b"\x1c\r",
                    b"\x0b\x0b" + msg + b"\x1c\r",
                    b"\x0b" + msg + b"\x1c\r\x1c\r",
                    b"\x0b\x1c\r",
                    b"\x0b" + msg[:40] + b"\x1c\r",
                    b"\x0b" + msg.replace(b"\r", b"\n") + b"\x1c\r",
                    b"\x0b" + msg + b"\r\x1c\r",
                    b"\x1c\r",
                    b"\x0b" + b"\x00" * 50 + b"\x1c\r",
                    b"\x0b" + msg + b"\x0b" + msg + b"\x1c\r",
                    b"\x0b"
                    + msg.replace(
                        b"|^~\\&", rng.choice([b"|^~\\", b"|^^\\&", b"||", b"|^~\\&#", b"|^~\\&#%", b"|^", b"\x1c"])
                    )
                    + b"\x1c\r",
                ]
            )
            frames.append(f)
        data = b"".join(frames)
        # a frame ends at its <FS>, with or without the <CR> (hl7/mllp.py)
        expected = sum(1 for f in frames if f.startswith(b"\x0b") and b"\x1c" in f)
        try:
            out, dt = await exchange(hport, data, timeout=6)
        except TimeoutError:
            found.setdefault("HL7 TIMEOUT", (data[:500], ""))
            continue
        except ConnectionResetError:
            out = b"RESET"
        acks = out.count(b"MSA|")
        hcounts[acks] = hcounts.get(acks, 0) + 1
        if acks == 0 and expected:
            found.setdefault("HL7 NOACK " + repr(frames[0][:20]), (data[:600], out[:300]))
        for name, msg2, tb in logs:
            found.setdefault(f"HL7 LOG {name} {msg2[:100]}", (data[:800], tb[-2500:]))
        logs.clear()
    await mllp.close()
    await http.close()
    await archive.close()
    return found, counts, hcounts


MODES = {
    "routes": fuzz_routes,
    "json": fuzz_json,
    "stow": fuzz_stow,
    "parsers": fuzz_parsers,
    "hl7": fuzz_hl7,
    "raw": fuzz_raw,
}


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[1] not in MODES:
        sys.exit(__doc__)
    mode, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(H())
    root.setLevel(logging.WARNING)
    args = (n, seed, sys.argv[4]) if mode == "routes" and len(sys.argv) > 4 else (n, seed)
    result = MODES[mode](*args)
    result = asyncio.run(result) if asyncio.iscoroutine(result) else result
    found, counts = result[0], result[1:]
    print(mode, "inputs", n, "answers", *counts, "distinct problems", len(found))
    for key, value in found.items():
        print("=====", key)
        for item in value:
            print(item if isinstance(item, str) else repr(item)[:800])


if __name__ == "__main__":
    main()
