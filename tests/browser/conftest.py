"""Playwright driving Debian's Chromium (``/usr/bin/chromium``): never a downloaded browser.

``scripts/ensure-browser.sh`` (run by ``make test``) installs it. Without it the browser
tests skip locally, and fail under CI (``CI`` set), where a skip would hide a gap.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# `make screenshots` points this at docs/images to refresh the pictures in the docs;
# ordinary runs write them to a scratch folder, so a test run leaves the tree clean.
SCREENSHOTS = Path(
    os.environ.get("QTASKS_SCREENSHOTS") or Path(tempfile.gettempdir()) / "qtasks-screenshots"
)
# Without the background-networking flags Chromium phones home at start-up, and a
# closed network answers by refusing connections the tests did not ask for.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium per test module. Not per session: Playwright's sync API leaves an
    event loop on the main thread while it runs, which later tests' ``async_to_sync``
    would trip over."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing; run scripts/ensure-browser.sh")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    # Playwright's sync API keeps an event loop in this thread; the ORM calls the tests
    # make between browser steps are ordinary sync code, so Django may allow them, for
    # as long as the browser is open and no longer.
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


def logged_in(chromium: Any, base_url: str, width: int, *, sidebar: bool) -> Any:
    """A fresh browser context ``width`` px wide, logged in to the admin through its
    login form, with the admin's app sidebar open or folded (as the admin remembers it)."""
    context = chromium.new_context(viewport={"width": width, "height": 800}, base_url=base_url)
    context.set_default_timeout(10_000)
    context.add_init_script(
        f"localStorage.setItem('django.admin.navSidebarIsOpen', '{str(sidebar).lower()}')"
    )
    page = context.new_page()
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")
    return page


@pytest.fixture
def page(chromium: Any, live_server: Any, admin_user: Any) -> Iterator[Any]:
    """A 1280 px window, logged in, the sidebar folded: more room for the list."""
    page = logged_in(chromium, live_server.url, 1280, sidebar=False)
    try:
        yield page
    finally:
        page.context.close()


def screenshot(page: Any, name: str, height: int = 800) -> None:
    """Save a picture (for docs/images/NAME-WIDTH.png, see SCREENSHOTS): the top
    ``height`` pixels of the page, as wide as the window."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    clip = {"x": 0, "y": 0, "width": width, "height": height}
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True, clip=clip)
