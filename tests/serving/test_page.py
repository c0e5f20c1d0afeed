"""The demo page at GET /, driven in a real headless Chromium against a real `recsys serve`.

Playwright (the Python package) drives the system's Chromium (Debian's `chromium` package): no browser download.
"""

from __future__ import annotations

import os
import secrets
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.serving.conftest import Api, Trained, start_api, stop_api

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright; it drives the system chromium)"
)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDLE = "document.body.dataset.state === 'idle'"


def chromium_binary() -> str | None:
    """$RECSYS_CHROMIUM, else the first Chromium-like browser on PATH."""
    explicit = os.environ.get("RECSYS_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = chromium_binary()
if CHROMIUM is None:  # before any fixture: no training and no server start for a test that cannot run
    pytest.skip("no chromium binary found (apt-get install chromium, or set RECSYS_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def api(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The service with the in-process memory store and the catalog (for titles)."""
    server = start_api(
        trained.bundles, None, tmp_path_factory.mktemp("page"), "--catalog", str(trained.log / "videos.parquet")
    )
    yield server
    stop_api(server)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless system Chromium with a fresh profile."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        yield context
        context.close()


class Page:
    """A browser tab on the service that records what should never happen: script errors, foreign requests."""

    def __init__(self, context: Any, api: Api) -> None:
        self.tab = context.new_page()
        self.api = api
        self.errors: list[str] = []
        self.foreign: list[str] = []
        origin = urlsplit(api.url)
        self.tab.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

        def on_console(message: Any) -> None:
            if message.type == "error":
                self.errors.append(f"console: {message.text}")

        self.tab.on("console", on_console)

        def on_request(request: Any) -> None:
            url = urlsplit(request.url)
            if url.scheme != "data" and (url.scheme, url.netloc) != (origin.scheme, origin.netloc):
                self.foreign.append(request.url)

        self.tab.on("request", on_request)

    def open(self, user: str) -> None:
        self.tab.goto(f"{self.api.url}/?user={quote(user, safe='')}")
        self.tab.wait_for_function(f"document.querySelectorAll('#candidate-list li').length > 0 && {IDLE}")

    def ids(self, list_id: str) -> list[str]:
        ids: list[str] = self.tab.eval_on_selector_all(f"#{list_id} li", "rows => rows.map(r => r.dataset.videoId)")
        return ids

    def titles(self, list_id: str) -> list[str]:
        titles: list[str] = self.tab.locator(f"#{list_id} li .title").all_inner_texts()
        return titles

    def text(self, selector: str) -> str:
        return str(self.tab.locator(selector).inner_text())

    def close(self) -> None:
        self.tab.close()


@pytest.fixture
def page(browser: Any, api: Api) -> Iterator[Page]:
    tab = Page(browser, api)
    yield tab
    tab.close()
    assert not tab.foreign, f"the page made requests outside the service: {tab.foreign}"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserting the signature)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_watch_similar_and_screenshot(page: Page, api: Api, tmp_path: Path) -> None:
    user = "page-user-" + secrets.token_hex(4)
    page.open(user)
    with api.client() as client:
        ready = client.get("/readyz").json()
    assert page.text("#model-version") == ready["model_version"]
    assert page.text("#store-status") == "memory: up"
    assert page.tab.input_value("#user-input") == user
    assert page.ids("history-list") == []
    initial = page.ids("candidate-list")
    assert len(initial) == 20 and len(set(initial)) == 20

    # Watch three candidates by pressing their buttons: the first, then the one that is now fourth, then seventh.
    watched: list[tuple[str, str]] = []
    for n, position in enumerate((0, 3, 6), start=1):
        row = page.tab.locator("#candidate-list li").nth(position)
        video_id = row.get_attribute("data-video-id")
        title = row.locator(".title").inner_text()
        assert video_id and title and title != video_id, "titles come from the catalog"
        row.locator("button.watch").click()
        page.tab.wait_for_function(f"document.querySelectorAll('#history-list li').length === {n} && {IDLE}")
        watched.append((video_id, title))
        assert page.text("#candidates-change").startswith(f"After watching “{title}”")

    # History: newest first, with titles, and what the service stored.
    newest_first = watched[::-1]
    assert page.ids("history-list") == [v for v, _ in newest_first]
    assert page.titles("history-list") == [t for _, t in newest_first]
    assert "just watched" in page.text("#history-list li:first-child")
    with api.client() as client:
        stored = client.get(f"/v1/users/{user}/history").json()
        answer = client.post("/v1/candidates", json={"user_id": user, "k": 20, "exclude_watched": True}).json()
    assert [h["video_id"] for h in stored["history"]] == [v for v, _ in watched]

    # Candidates: changed, the watched ones hidden, and exactly what the API answers for this user now.
    final = page.ids("candidate-list")
    assert final != initial
    assert not {v for v, _ in watched} & set(final)
    assert final == [c["video_id"] for c in answer["candidates"]]
    assert page.titles("candidate-list") == [c["title"] for c in answer["candidates"]]
    assert page.tab.locator("#candidate-list .badge.new").count() >= 1, "changes are highlighted"

    # Similar videos of a clicked history entry.
    video_id, title = watched[0]
    page.tab.locator(f"#history-list li[data-video-id='{video_id}'] .title").click()
    page.tab.wait_for_function(f"document.querySelectorAll('#similar-list li').length > 0 && {IDLE}")
    with api.client() as client:
        similar = client.get(f"/v1/videos/{video_id}/similar", params={"k": 20}).json()
    assert page.ids("similar-list") == [c["video_id"] for c in similar["candidates"]]
    assert page.titles("similar-list") == [c["title"] for c in similar["candidates"]]
    assert title in page.text("#similar-sub")
    selected = page.tab.locator(f"#history-list li[data-video-id='{video_id}']")
    assert "selected" in (selected.get_attribute("class") or "")
    assert page.tab.locator("#message").is_hidden()

    shot = tmp_path / "page.png"
    page.tab.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    assert png_size(shot) == (1280, 800)
    assert not page.errors, page.errors


def test_api_errors_are_shown_and_text_is_not_html(page: Page, api: Api) -> None:
    # The service refuses ids over 256 characters with a 422 whose detail the page shows.
    page.tab.goto(f"{api.url}/?user={'x' * 300}")
    page.tab.wait_for_selector("#message:not([hidden])")
    page.tab.wait_for_function(IDLE)
    message = page.text("#message-text")
    assert "422" in message and "longer than 256 characters" in message

    # An id with "/" cannot go into the history route's path: the page says so instead of a bare 404.
    page.tab.goto(f"{api.url}/?user=a%2Fb")
    page.tab.wait_for_selector("#message:not([hidden])")
    assert "contains “/”" in page.text("#message-text")

    # Server strings are text, never markup: a user id full of HTML stays literal.
    user = "<img src=x onerror=\"document.title='owned'\"><b>bold"  # no "/": the history route cannot take one
    page.open(user)
    assert page.tab.locator("#message").is_hidden()
    assert user in page.text("#candidates-meta")
    assert page.tab.locator("#candidates-meta b, #candidates-meta img, main img").count() == 0
    assert page.tab.title() != "owned"
    # The known 422 above logged a failed request in the console: only script errors matter here.
    assert not [e for e in page.errors if e.startswith("page error")], page.errors
