"""The Retention and Storage pages (web/ui_policy.py), in process: the rules and the dry run, who may
see what, the compression figures and policies, the compress form for writers only. The buttons
themselves are driven in headless Chromium by tests/web/test_policy_browser.py."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.compression import policy_from_mapping
from minipacs.core.metadata import MetadataStore
from minipacs.core.retention import RetentionRule
from minipacs.core.users import Role, User, hash_password
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.web.test_rest_retention import old_study

USERS = (
    User("ada", hash_password("a-pass", n=2**4), Role.ADMIN),
    User("oli", hash_password("o-pass", n=2**4), Role.OPERATOR),
    User("vic", hash_password("v-pass", n=2**4), Role.VIEWER),
)


def basic(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{name[0]}-pass".encode()).decode()}


ADA, OLI, VIC = basic("ada"), basic("oli"), basic("vic")


def run(tmp: Path, body: Any, **settings: Any) -> None:
    async def main() -> None:
        config = Settings(data_dir=tmp / "data", fsync=False, users=USERS, **settings)
        archive = await open_archive(config)
        metadata = MetadataStore(archive)
        metadata.attach()
        app = create_app(AppContext(config, archive, metadata))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, archive)
        finally:
            await metadata.close()
            await archive.close()

    asyncio.run(main())


def test_retention_page_lists_rules_and_the_dry_run(tmp_path: Path) -> None:
    rules = (
        RetentionRule("month", older_than_days=30, match={"ModalitiesInStudy": "CT"}),
        RetentionRule("quota", max_storage_bytes=10**12, protect_label="keep"),
    )

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        old = await old_study(client, archive, 40, ADA)
        young = await old_study(client, archive, 1, ADA)
        assert (await client.get("/ui/retention", headers=OLI)).status_code == 403  # admin only
        page = await client.get("/ui/retention", headers=ADA)
        assert page.status_code == 200, page.text
        html = page.text
        assert ">Retention</a>" in html and ">Storage</a>" in html  # both in the navigation
        assert '<tr data-rule="month"><td>month</td><td>30 days</td><td>arrival</td>' in html
        assert (
            "{&#34;ModalitiesInStudy&#34;: &#34;CT&#34;}" in html
            and "1,000,000,000,000 bytes</td><td>every study</td><td>keep</td>" in html
        )
        preview = html.split('id="retention-preview"', 1)[1].split("</table>", 1)[0]
        assert old in preview and young not in preview and "older than 30 days" in preview.lower()
        assert "1 study," in html and 'id="retention-run"' in html
        nav = (await client.get("/ui/overview", headers=OLI)).text
        assert ">Retention</a>" not in nav and ">Storage</a>" in nav
        assert len((await client.get("/api/studies", headers=ADA)).json()) == 2  # looking deleted nothing

    run(tmp_path, body, retention=rules)


def test_retention_page_without_rules(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        page = await client.get("/ui/retention", headers=ADA)
        assert page.status_code == 200 and "No retention rules" in page.text and "retention-run" not in page.text

    run(tmp_path, body)


def test_storage_page_figures_policies_and_the_form(tmp_path: Path) -> None:
    policy = policy_from_mapping({"name": "ct-old", "syntax": "jpeg-ls-lossless", "match": {"Modality": "CT"}})

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await old_study(client, archive, 0, ADA)
        r = await client.get("/ui/storage", headers=VIC)
        assert r.status_code == 200, r.text
        figures = r.text.split('id="storage-figures">', 1)[1].split("</p>", 1)[0]
        assert figures.startswith("1 instances take") and "saved <strong>0.0 MiB</strong> (ratio 1.0)" in figures
        assert '<tr data-policy="ct-old"><td>ct-old</td><td>jpeg-ls-lossless' in r.text
        assert "1.2.840.10008.1.2.4.80" in r.text  # JPEG-LS lossless, PS3.5 A.4.3
        assert 'id="compress-study"' not in r.text  # a viewer may not compress
        r = await client.get("/ui/storage", headers=OLI)
        assert 'id="compress-study"' in r.text and '<option value="rle">' in r.text

    run(tmp_path, body, compression=(policy,))
