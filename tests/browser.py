"""A real headless browser for the report tests: Debian's Chromium through Selenium.

Each report page is opened at 1,280 px wide; the tests look at what a person would:
every picture the page references has loaded, nothing runs off the side, and a
screenshot comes out.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Chromium's background services knock on a closed network at every start; these keep it quiet.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1600")


def chromium():
    """A Selenium Chrome driver on the machine's Chromium, or a skip saying how to install it."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def look_at(page: Path, screenshot: Path) -> dict:
    """Open ``page``; what loaded, how wide it is, and a screenshot."""
    driver = chromium()
    try:
        driver.get(page.resolve().as_uri())
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            Promise.all([...document.images].map(img => img.complete ? null :
                new Promise(r => { img.onload = img.onerror = r; }))).then(() => done());""")
        facts = driver.execute_script("""
            return {images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
                    width: document.documentElement.scrollWidth, view: window.innerWidth,
                    text: document.body.innerText};""")
        driver.save_screenshot(str(screenshot))
        return facts
    finally:
        driver.quit()
