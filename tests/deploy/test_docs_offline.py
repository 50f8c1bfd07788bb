"""/docs works with no route to the internet: a real ``abn serve`` serves Swagger UI's page and
every file it loads itself, from files installed with the package (fastapi-offline), so the
page renders on an air-gapped cluster or behind a proxy that blocks CDNs.

FastAPI's own /docs loads its script and stylesheet from a CDN, and ReDoc's bundle fetches a
logo from one; the service serves only Swagger UI, with the validator badge (which would send
the OpenAPI document to validator.swagger.io) off.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.service.helpers import ServerProcess

pytestmark = pytest.mark.timeout(300)  # may build the shared tiny model first

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def client(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    server = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("docs") / "server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            yield c
    finally:
        assert server.stop() == 0, server.log()


def test_docs_page_refers_only_to_the_server_itself(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.findall(r"\b[a-z][a-z0-9+.-]*://", page.text), "an absolute URL in /docs"
    assert "//" not in "".join(re.findall(r"""url: ['"]([^'"]+)""", page.text))
    assert '"validatorUrl": null' in page.text
    links = Links()
    links.feed(page.text)
    assert len(links.urls) == 3  # the script, the stylesheet and the icon
    for url in links.urls:
        assert not urlsplit(url).netloc and url.startswith("/docs/"), url


def test_every_file_of_the_page_is_served(client: httpx.Client) -> None:
    links = Links()
    links.feed(client.get("/docs").text)
    for url in links.urls:
        response = client.get(urljoin("/docs", url))
        assert response.status_code == 200, url
        expected = CONTENT_TYPES[Path(urlsplit(url).path).suffix]
        assert response.headers["content-type"].startswith(expected), (url, response.headers)
        assert len(response.content) > 1000, url
    script = next(u for u in links.urls if u.endswith(".js"))
    assert b"SwaggerUIBundle" in client.get(script).content  # what the page's script calls
    assert client.get("/openapi.json").json()["info"]["title"] == "abn-serve"


def test_redoc_is_not_served(client: httpx.Client) -> None:
    assert client.get("/redoc").status_code == 404
