"""The example site (``make run``) on a phone: 390 px wide, nothing scrolls sideways."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import SCREENSHOTS
from tests.test_example_project import Browser, ExampleSite, _wait_for_start
from tests.test_example_project import example_site as example_site  # the fixture

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


def test_the_example_page_fits_a_phone(chromium: Any, example_site: ExampleSite) -> None:
    _wait_for_start(example_site)
    browser = Browser(example_site.url)
    for fields in ({"a": 20, "b": 22}, {"a": 1, "b": 2, "delay": 5}):
        browser.submit("/", "/start/add/", fields)
    browser.submit("/", "/start/failing/", {})
    context = chromium.new_context(viewport=PHONE, base_url=example_site.url)
    try:
        page = context.new_page()
        page.goto("/")
        page.wait_for_selector("#task-rows tr td.call")
        page.wait_for_function("document.querySelectorAll('#task-rows tr').length >= 3")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "example-390.png"), full_page=True)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow == 0, f"the page is {overflow} px wider than the phone"
        widest = page.evaluate(
            "Math.max(...Array.from(document.querySelectorAll('main *'),"
            " (el) => el.getBoundingClientRect().right))"
        )
        assert widest <= PHONE["width"], f"something reaches {widest} px"
    finally:
        context.close()
