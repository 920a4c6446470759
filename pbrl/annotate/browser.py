"""A real headless browser for the annotation page: Debian's Chromium driven through Selenium and its
ChromeDriver (``apt-get install chromium chromium-driver``; ``pip install selenium``). The tests, the benchmark
and the README screenshot use it; nothing is downloaded (no Selenium Manager, no bundled browser)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pbrl.errors import ConfigError, describe

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
# flags for a closed network and a root user: no sandbox, no background calls home, autoplay without a gesture
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required", "--disable-dev-shm-usage", "--mute-audio")


def find_browser() -> tuple[str, str]:
    """Paths of Chromium and ChromeDriver, or ConfigError saying what to install."""
    browser = next((p for p in CHROMIUM if Path(p).exists()), shutil.which("chromium"))
    driver = next((p for p in CHROMEDRIVER if Path(p).exists()), shutil.which("chromedriver"))
    if browser is None or driver is None:
        raise ConfigError(describe("browser", "chromium + chromedriver", f"{browser or 'no chromium'}, "
                                   f"{driver or 'no chromedriver'}", "Debian's: apt-get install chromium chromium-driver"))
    return browser, driver


def chromium(width: int = 1000, height: int = 640):
    """A headless Chromium (Selenium ``WebDriver``) with its own empty profile; ``quit()`` it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='pbrl-chromium-')}")
    return webdriver.Chrome(service=Service(driver), options=options)


def press(driver, key: str) -> None:
    """Press ``key`` (a character or a ``selenium.webdriver.common.keys.Keys`` value) on the page."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def wait_for(driver, script: str, *, timeout: float = 20.0):
    """Run ``script`` (a JavaScript expression) until it is truthy; return its value (TimeoutException after
    ``timeout`` seconds)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: d.execute_script(f"return {script};"))
