"""The upload page's routes (gateway/ui/): off by default, its files, headers and settings.
In a real browser: tests/test_ui_browser.py."""

from __future__ import annotations

import html.parser
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import Settings, load_settings
from gateway.ui import content_security_policy, public_origin
from tests.inprocess import BASE_URL, app_client, build_app

ROOT = Path(__file__).parent.parent
STATIC = ROOT / "gateway" / "ui" / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' {}; "
    "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[httpx.Client]:
    app, _ = build_app(tmp_path / "data", settings={"ui": True})
    with app_client(app) as client:
        yield client


def test_off_by_default(tmp_path: Path) -> None:
    assert Settings().ui is False
    app, _ = build_app(tmp_path / "data")
    with app_client(app) as client:
        for path in ("/ui/", "/ui", "/ui/config.json", "/ui/static/app.js"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["code"] == "ERR_NOT_FOUND"


def test_the_setting_reads_from_the_environment() -> None:
    assert load_settings(environ={"GATEWAY_UI": "true"}).ui is True
    assert load_settings(environ={"GATEWAY_UI": "false"}).ui is False


def test_the_page_and_its_headers(ui: httpx.Client) -> None:
    response = ui.get("/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == (STATIC / "index.html").read_bytes()
    assert response.headers["content-security-policy"] == CSP.format(BASE_URL)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert "set-cookie" not in response.headers


def test_static_files(ui: httpx.Client) -> None:
    for name, media in (("app.js", "text/javascript"), ("tus.min.js", "text/javascript")):
        response = ui.get(f"/ui/static/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == f"{media}; charset=utf-8"
        assert response.content == (STATIC / name).read_bytes()
        assert "content-security-policy" in response.headers
    assert ui.get("/ui/static/style.css").headers["content-type"] == "text/css; charset=utf-8"
    for path in ("/ui/static/index.html", "/ui/static/..%2Fconfig.json", "/ui/static/nope.js"):
        assert ui.get(path).status_code == 404, path


def test_without_a_slash_redirects_to_the_page(ui: httpx.Client) -> None:
    response = ui.get("/ui")
    assert response.status_code == 308
    assert response.headers["location"] == "/ui/"  # relative: not built from Host


def test_config_names_the_endpoint_and_a_record_per_chunk(tmp_path: Path) -> None:
    app, _ = build_app(
        tmp_path / "data",
        settings={"ui": True, "base_path": "/up/", "segment_size": 1 << 20},
    )
    with app_client(app) as client:
        response = client.get("/ui/config.json")
    assert response.json() == {"endpoint": "/up/", "chunkSize": 1 << 20}


def test_connect_src_names_the_public_url_origin() -> None:
    assert content_security_policy(Settings()) == CSP.replace(" {}", "")
    public = Settings(public_url="https://uploads.example.org/gw")
    assert content_security_policy(public) == CSP.format("https://uploads.example.org")
    assert public_origin("https://h.example:8443/") == "https://h.example:8443"


class _Markup(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names:
            self.problems.append(f"inline style in <{tag}>")
        if any(name.startswith("on") for name in names):
            self.problems.append(f"inline handler in <{tag}>")
        if tag == "script":
            self.scripts.append(dict(attrs).get("src") or "")
            self._in_script = True
        for name, value in attrs:
            if name in ("src", "href") and value and re.match(r"(?i)(https?:)?//", value):
                self.problems.append(f"a resource from elsewhere: {value}")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("an inline script")


def test_the_page_has_no_inline_code_and_nothing_from_elsewhere() -> None:
    markup = _Markup()
    markup.feed((STATIC / "index.html").read_text())
    assert markup.problems == []
    assert markup.scripts == ["static/tus.min.js", "static/app.js"]


def test_the_vendored_client_is_the_pinned_one_with_its_license() -> None:
    build = (ROOT / "scripts" / "build-ui").read_text()
    (version,) = re.findall(r"^VERSION=(\S+)$", build, re.M)
    head = (STATIC / "tus.min.js").read_text()[:8000]
    assert head.startswith(f"/*! tus-js-client {version} ")
    assert "Permission is hereby granted, free of charge" in head  # MIT
    assert "js-base64" in head  # the bundled BSD-3-Clause package's notice
