"""Headless Chromium for the web page tests: Debian's `chromium` and `chromedriver` through selenium.

    with chromium(tmp_path) as browser:          # selenium WebDriver, fresh profile under tmp_path
        browser.get(url)
        fill(browser, {"staff_number": "S1", "pin": "123456"}); click(browser, "sign-in")

`make test` installs the Debian packages when they are missing; without them the tests fail with a
message saying so (they are never skipped). Waits are deadlines for a page to appear, not timings.
"""
import contextlib
import os
import shutil

CHROMIUM = os.environ.get("YKT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("YKT_CHROMEDRIVER", "/usr/bin/chromedriver")
PAGE_DEADLINE_S = 30
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900", "--lang=zh-CN")


def require_chromium():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(path) or shutil.which(path))]
    if missing:
        raise RuntimeError("浏览器测试需要 Debian 的 chromium 与 chromium-driver（make test 会安装）/ browser tests "
                           "need Debian's chromium and chromium-driver (make test installs them): missing %s"
                           % ", ".join(missing))


@contextlib.contextmanager
def chromium(profile_parent):
    """A headless Chromium with a fresh --user-data-dir; quits the browser and driver at the end."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = os.path.join(str(profile_parent), "chromium-profile")
    os.makedirs(profile, exist_ok=True)
    options.add_argument("--user-data-dir=%s" % profile)
    service = Service(executable_path=CHROMEDRIVER, log_output=os.path.join(str(profile_parent), "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_DEADLINE_S)
    try:
        yield driver
    finally:
        driver.quit()


def by_id(driver, element_id):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, element_id)


def fill(driver, values):
    """Type into inputs found by id, replacing what they hold."""
    for element_id, value in values.items():
        element = by_id(driver, element_id)
        element.clear()
        element.send_keys(value)


def set_date(driver, element_id, iso_date):
    """Set an <input type=date> (typing into it depends on the locale's date order)."""
    driver.execute_script("document.getElementById(arguments[0]).value = arguments[1]", element_id, iso_date)


def click(driver, element_id):
    """Click a button or link and wait until the next page has loaded.

    The old page is marked with a script variable; the next document does not have it. (Waiting for
    an old element to go stale races the navigation: chromedriver may then answer with an inspector
    error instead of a stale-element one.)"""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.execute_script("window.__yktOldPage = true")
    by_id(driver, element_id).click()
    WebDriverWait(driver, PAGE_DEADLINE_S).until(_new_page_loaded)


def _new_page_loaded(driver):
    from selenium.common.exceptions import WebDriverException
    try:
        return driver.execute_script("return !window.__yktOldPage && document.readyState === 'complete'")
    except WebDriverException:      # the navigation is under way: ask again
        return False


def text(driver):
    """Everything the page shows (body text) plus every form value, for "never shown" checks."""
    shown = driver.find_element("tag name", "body").text
    values = driver.execute_script(
        "return Array.from(document.querySelectorAll('input, select, textarea')).map(e => e.value).join('\\n')")
    return shown + "\n" + values
