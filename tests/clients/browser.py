"""Headless Chromium for the browser tests, started as this machine needs it:
Debian's chromium and chromedriver (CHROMIUM and CHROMEDRIVER override the
paths), no sandbox as root, no background network, a fresh profile."""

import os
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def chromium(window="1400,2200", console_log=False):
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--window-size={window}",
        f"--user-data-dir={tempfile.mkdtemp(prefix='sagaflow-chromium-')}",
    ]:
        options.add_argument(flag)
    if console_log:
        # keep the page's console, for `driver.get_log("browser")`
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)
