"""The Retrieve Capabilities transaction (PS3.18 8.9, Annex H): OPTIONS on the base URI answers a WADL
document that describes exactly the resources and methods the server has, valid WADL."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.core.archive import Archive
from minipacs.core.users import Role, User, hash_password
from minipacs.web.capabilities import DESCRIPTIONS, WADL, WADL_NAMESPACE
from tests.native_schema import XMLLINT
from tests.peers import missing_peer
from tests.web.test_auth import app_of
from tests.web.test_openapi import routes_of

W = "{" + WADL_NAMESPACE + "}"

#: The structure of WADL (W3C Member Submission 2009, section 2 and its XML Schema) for the elements a
#: Capabilities Description uses, in RELAX NG: element order, the attributes each may carry, their types.
WADL_SCHEMA = f"""<?xml version="1.0" encoding="UTF-8"?>
<grammar xmlns="http://relaxng.org/ns/structure/1.0" ns="{WADL_NAMESPACE}"
         datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">
  <start>
    <element name="application">
      <zeroOrMore><ref name="doc"/></zeroOrMore>
      <oneOrMore>
        <element name="resources">
          <attribute name="base"><data type="anyURI"/></attribute>
          <zeroOrMore><ref name="doc"/></zeroOrMore>
          <oneOrMore><ref name="resource"/></oneOrMore>
        </element>
      </oneOrMore>
    </element>
  </start>
  <define name="doc">
    <element name="doc"><optional><attribute name="title"/></optional><text/></element>
  </define>
  <define name="resource">
    <element name="resource">
      <attribute name="path"/>
      <zeroOrMore><ref name="doc"/></zeroOrMore>
      <zeroOrMore><ref name="param"/></zeroOrMore>
      <zeroOrMore><choice><ref name="method"/><ref name="resource"/></choice></zeroOrMore>
    </element>
  </define>
  <define name="method">
    <element name="method">
      <attribute name="name"><data type="NMTOKEN"/></attribute>
      <attribute name="id"><data type="ID"/></attribute>
      <zeroOrMore><ref name="doc"/></zeroOrMore>
      <optional>
        <element name="request">
          <zeroOrMore><ref name="param"/></zeroOrMore>
          <zeroOrMore><ref name="representation"/></zeroOrMore>
        </element>
      </optional>
      <zeroOrMore>
        <element name="response">
          <attribute name="status"><list><oneOrMore><data type="unsignedInt"/></oneOrMore></list></attribute>
          <zeroOrMore><ref name="representation"/></zeroOrMore>
        </element>
      </zeroOrMore>
    </element>
  </define>
  <define name="param">
    <element name="param">
      <attribute name="name"><data type="NMTOKEN"/></attribute>
      <attribute name="style"><choice><value>plain</value><value>query</value><value>matrix</value>
        <value>header</value><value>template</value></choice></attribute>
      <optional><attribute name="type"><data type="QName"/></attribute></optional>
      <optional><attribute name="required"><data type="boolean"/></attribute></optional>
      <optional><attribute name="repeating"><data type="boolean"/></attribute></optional>
    </element>
  </define>
  <define name="representation">
    <element name="representation"><attribute name="mediaType"/></element>
  </define>
</grammar>
"""


def _options(web: Callable[..., Any], path: str = "/dicom-web/", **headers: str) -> httpx.Response:
    async def body(client: httpx.AsyncClient, archive: Archive) -> httpx.Response:
        return await client.options(path, headers=headers)

    response: httpx.Response = web(body)
    return response


def _operations(node: ET.Element, prefix: str = "") -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for resource in node.findall(W + "resource"):
        path = prefix + "/" + resource.attrib["path"]
        found |= {(method.attrib["name"], path) for method in resource.findall(W + "method")}
        found |= _operations(resource, path)
    return found


@pytest.mark.parametrize("path", ["/dicom-web/", "/dicom-web"])
def test_options_on_the_base_uri_describes_every_dicomweb_route(
    web: Callable[..., Any], tmp_path: Path, path: str
) -> None:
    """Annex H: one application, one resources whose base is the service's URL, a resource tree with every
    method -- exactly the app's DICOMweb routes (read from Starlette, not through web/capabilities.py),
    but the Retrieve Capabilities transaction itself (Annex H's note)."""
    r = _options(web, path, Accept=WADL)
    assert r.status_code == 200 and r.headers["content-type"] == WADL
    root = ET.fromstring(r.content)
    assert root.tag == W + "application"
    (resources,) = root.findall(W + "resources")
    assert resources.attrib["base"] == "http://testserver/dicom-web/"
    routes = {
        (method.upper(), route_path.removeprefix("/dicom-web"))
        for route_path, method, _route in routes_of(app_of(tmp_path).routes)
        if route_path.startswith("/dicom-web/") and method != "options"
    }
    assert _operations(resources) == routes
    study = f"./{W}resource[@path='studies']/{W}resource[@path='{{study}}']"
    metadata = resources.find(f"{study}/{W}resource[@path='metadata']")
    assert metadata is not None
    assert [r.attrib["mediaType"] for r in metadata.iter(W + "representation")] == [
        "application/dicom+json",
        'multipart/related; type="application/dicom+xml"',
    ]
    template = resources.find(f"{study}/{W}param")
    assert template is not None and template.attrib == {
        "name": "study",
        "style": "template",
        "type": "xsd:string",
        "required": "true",
    }


def test_the_description_is_valid_wadl(web: Callable[..., Any], tmp_path: Path) -> None:
    if not XMLLINT.exists():
        missing_peer("xmllint", "apt-get install libxml2-utils")
    (tmp_path / "wadl.rng").write_text(WADL_SCHEMA)
    (tmp_path / "description.wadl").write_bytes(_options(web).content)
    done = subprocess.run(
        [str(XMLLINT), "--noout", "--relaxng", str(tmp_path / "wadl.rng"), str(tmp_path / "description.wadl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_dicomweb_endpoint_has_its_row_and_every_row_an_endpoint(tmp_path: Path) -> None:
    """DESCRIPTIONS is keyed by endpoint function: a new DICOMweb route without a row would be described
    as nothing, a row without a route describes nothing."""
    names = {
        getattr(route, "endpoint").__name__  # noqa: B009 - Route.endpoint, read as Starlette keeps it
        for path, _method, route in routes_of(app_of(tmp_path).routes)
        if path.startswith("/dicom-web")
    }
    assert names == set(DESCRIPTIONS)


@pytest.mark.parametrize(
    "accept,status",
    [
        ("", 200),  # no Accept: the only representation there is
        (WADL, 200),
        ("application/xml", 200),
        ("text/xml;q=0.5", 200),
        ("*/*", 200),
        ("application/*", 200),
        ("application/json", 406),  # PS3.18 8.9.4 names it, but defines no structure for it
        ("image/png, text/html", 406),
        (WADL + ";q=0", 406),
        (WADL + ";q=" + "9" * 4000, 200),
        (", ".join(["x/y;q=0.1"] * 5000), 406),
        ("\x01\x02;;;=,,,", 406),
    ],
)
def test_accept(web: Callable[..., Any], accept: str, status: int) -> None:
    """PS3.18 8.9.2: the description in an Acceptable Media Type; nothing acceptable: 406, never a 5xx."""
    r = _options(web, **({"Accept": accept} if accept else {}))
    assert r.status_code == status, r.text[:300]
    if status == 406:
        assert WADL in r.json()["error"]["message"]


def test_it_needs_read_permission_like_every_dicomweb_route(web: Callable[..., Any]) -> None:
    users = (User("vic", hash_password("v-pass", n=2**4), Role.VIEWER),)

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        assert (await client.options("/dicom-web/")).status_code == 401
        assert (await client.options("/dicom-web/", auth=("vic", "v-pass"))).status_code == 200

    web(body, users=users)
