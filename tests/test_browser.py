"""The drawing page in a real browser: headless Chromium, driven by Selenium,
on the real waitress server started as the README says (python app.py).

Digits are drawn stroke by stroke with WebDriver pointer actions (mouse, pen
and touch pointers), the prediction is read off the page and checked, and a
screenshot is saved (into pytest's tmp dir; also to $DIGIT_APP_SCREENSHOT if set).
Skips, saying why, where Debian's chromium or chromium-driver is missing.
"""

import math
import os
import shutil

import pytest
from PIL import Image

import inference
from conftest import APP_MODEL as MODEL
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)
if not MODEL.is_file():
    pytest.skip(f"no model file at {MODEL} (python train.py)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -r requirements.txt)")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Strokes in canvas units (0..1, from the top left), drawn as a person would.
DIGITS = {
    1: [[(0.40, 0.24), (0.52, 0.14), (0.52, 0.86)]],
    7: [[(0.26, 0.18), (0.74, 0.18), (0.58, 0.45), (0.44, 0.86)], [(0.38, 0.52), (0.66, 0.52)]],
    0: [[(0.50 + 0.22 * math.sin(t / 24 * 2 * math.pi), 0.50 - 0.34 * math.cos(t / 24 * 2 * math.pi))
         for t in range(25)]],
}


@pytest.fixture(scope="module")
def server_url(app_server):
    host, port = app_server
    return f"http://{host}:{port}/"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--window-size=1000,760", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for_result(driver, timeout=20):
    """Wait until the page shows the answer to its latest request; return (state, digit text)."""
    def settled(d):
        return d.execute_script(
            "const r = document.getElementById('result');"
            "return r.dataset.state !== 'empty' && r.dataset.busy === 'false'"
            " ? [r.dataset.state, document.getElementById('digit').textContent] : null;")
    return tuple(WebDriverWait(driver, timeout, poll_frequency=0.05).until(settled))


def draw(driver, strokes, kind=interaction.POINTER_MOUSE):
    """Draw `strokes` on the canvas with pointer actions, one press and release per stroke."""
    canvas = driver.find_element(By.ID, "pad")
    size = canvas.size["width"]
    builder = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=5)
    pointer = builder.pointer_action

    def move(x, y):  # offsets from the canvas centre, in CSS pixels
        pointer.move_to(canvas, round((x - 0.5) * size), round((y - 0.5) * size))

    for stroke in strokes:
        move(*stroke[0])
        pointer.pointer_down()
        for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
            steps = max(1, round(max(abs(x1 - x0), abs(y1 - y0)) * size / 12))
            for i in range(1, steps + 1):
                move(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps)
        pointer.pointer_up()
    builder.perform()


def clear(driver):
    driver.find_element(By.ID, "clear").click()
    assert driver.find_element(By.ID, "digit").text == "–"


@pytest.mark.parametrize("digit, kind", [(1, interaction.POINTER_MOUSE),
                                         (7, interaction.POINTER_PEN),
                                         (0, interaction.POINTER_TOUCH)])
def test_drawn_digits_are_recognised(browser, server_url, digit, kind, tmp_path):
    browser.get(server_url)
    clear(browser)
    draw(browser, DIGITS[digit], kind)
    state, shown = wait_for_result(browser)
    assert (state, shown) == ("done", str(digit))
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars li")
    assert len(bars) == 10
    # the page writes a probability above 0.999 as ">99.9%" (calibrated: never quite sure)
    values = [float(bar.find_element(By.CLASS_NAME, "bar-value").text.lstrip(">").rstrip("%")) for bar in bars]
    assert values.index(max(values)) == digit and 95 <= sum(values) <= 105
    assert "top" in bars[digit].get_attribute("class")
    track = bars[digit].find_element(By.CLASS_NAME, "bar-track").size["width"]
    fill = bars[digit].find_element(By.CLASS_NAME, "bar-fill")
    WebDriverWait(browser, 5, poll_frequency=0.05).until(  # the drawn bar's length is its probability
        lambda _: abs(fill.size["width"] / track - values[digit] / 100) < 0.03)
    announced = browser.find_element(By.ID, "announce").get_attribute("textContent")
    assert announced.startswith(f"Predicted digit {digit},")  # for screen readers, once released
    path = tmp_path / f"drawn-{digit}.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 0
    if digit == 7 and os.environ.get("DIGIT_APP_SCREENSHOT"):
        browser.save_screenshot(os.environ["DIGIT_APP_SCREENSHOT"])


def test_predictions_update_while_drawing(browser, server_url):
    """A prediction arrives before the pointer is released (debounced)."""
    browser.get(server_url)
    canvas = browser.find_element(By.ID, "pad")
    size = canvas.size["width"]
    builder = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_MOUSE, "mouse"), duration=5)
    pointer = builder.pointer_action
    pointer.move_to(canvas, 0, round(-0.35 * size)).pointer_down()
    for i in range(1, 11):
        pointer.move_to(canvas, 0, round((-0.35 + 0.07 * i) * size))
    pointer.pause(1.0)  # held still, still pressed
    builder.perform()
    try:
        state, shown = wait_for_result(browser)
        assert state == "done" and shown.isdigit()
    finally:
        builder.clear_actions()  # releases the button


def test_clear_and_an_image_with_no_digit(browser, server_url, tmp_path):
    browser.get(server_url)
    draw(browser, DIGITS[1])
    wait_for_result(browser)
    clear(browser)
    assert browser.execute_script("return document.getElementById('result').dataset.state") == "empty"
    bar_texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars .bar-value")]
    assert bar_texts == ["–"] * 10
    # An image with no digit in it: the page says so instead of guessing.
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), "white").save(blank)
    browser.find_element(By.ID, "file").send_keys(str(blank))
    assert wait_for_result(browser) == ("error", "?")
    assert "no digit found" in browser.find_element(By.ID, "message").text.lower()


def test_an_image_that_is_not_a_digit_is_called_so(browser, server_url):
    browser.get(server_url)
    browser.find_element(By.ID, "file").send_keys(str(ROOT / "docs" / "examples" / "star.png"))
    assert wait_for_result(browser) == ("done", "?")
    assert browser.find_element(By.ID, "confidence").text == "not a digit"
    assert "best guess" in browser.find_element(By.ID, "message").text
    browser.find_element(By.ID, "file").send_keys(str(ROOT / "sample_test_image" / "7.png"))
    assert wait_for_result(browser) == ("done", "7")  # and a digit after it is a digit again
    assert browser.find_element(By.ID, "confidence").text.endswith("% sure")


def test_keyboard_reaches_the_controls_and_a_file_can_be_chosen(browser, server_url):
    browser.get(server_url)
    outline = "return getComputedStyle(document.querySelector('label[for=file]')).outlineStyle"
    assert browser.execute_script(outline) == "none"
    for expected in ["clear", "file"]:
        ActionChains(browser).send_keys(Keys.TAB).perform()
        assert browser.switch_to.active_element.get_attribute("id") == expected
    assert browser.execute_script(outline) != "none"  # the hidden file input's focus shows on its label
    # Every control has an accessible name; the result is announced politely.
    assert browser.find_element(By.CSS_SELECTOR, "label[for=file]").text
    assert browser.find_element(By.ID, "pad").get_attribute("aria-label")
    assert browser.find_element(By.ID, "announce").get_attribute("aria-live") == "polite"

    browser.find_element(By.ID, "file").send_keys(str(ROOT / "sample_test_image" / "3.png"))
    state, shown = wait_for_result(browser)
    assert (state, shown) == ("done", str(inference.predict(ROOT / "sample_test_image" / "3.png",
                                                            model=str(MODEL)).digit))
    browser.find_element(By.ID, "clear").send_keys(Keys.ENTER)
    assert browser.find_element(By.ID, "digit").text == "–"


def test_phone_sized_screen(browser, server_url, tmp_path):
    browser.set_window_size(390, 844)
    try:
        browser.get(server_url)
        layout = browser.execute_script(
            "const c = document.getElementById('pad').getBoundingClientRect();"
            "return [document.documentElement.scrollWidth, window.innerWidth, c.left, c.right, c.width];")
        scroll_width, inner_width, left, right, width = layout
        assert scroll_width <= inner_width and left >= 0 and right <= inner_width and width >= 250
        draw(browser, DIGITS[1], interaction.POINTER_TOUCH)
        assert wait_for_result(browser) == ("done", "1")
        browser.save_screenshot(str(tmp_path / "phone.png"))
    finally:
        browser.set_window_size(1000, 760)


def test_page_loads_only_from_its_server_without_errors(browser, server_url):
    browser.get_log("browser")  # drop what earlier tests logged
    browser.get(server_url)
    draw(browser, DIGITS[7])
    wait_for_result(browser)
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(server_url) for url in resources), resources
    problems = [entry["message"] for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not problems


# A number on the wide pad, in its units (0..1 of its width and of its height).
NUMBER = {
    "17": [[(0.335, 0.25), (0.36, 0.16), (0.36, 0.84)],
           [(0.47, 0.18), (0.64, 0.18), (0.56, 0.50), (0.51, 0.84)]],
    "402": [[(0.30, 0.16), (0.25, 0.60), (0.38, 0.60)], [(0.35, 0.30), (0.35, 0.84)],
            [(0.50 + 0.06 * math.sin(t / 24 * 2 * math.pi), 0.50 - 0.34 * math.cos(t / 24 * 2 * math.pi))
             for t in range(25)],
            [(0.64, 0.30), (0.69, 0.17), (0.75, 0.30), (0.64, 0.84), (0.78, 0.84)]],
}


def draw_wide(driver, element_id, strokes, kind=interaction.POINTER_MOUSE):
    """Draw strokes on a canvas that need not be square (points in 0..1 of its width and height)."""
    canvas = driver.find_element(By.ID, element_id)
    width, height = canvas.size["width"], canvas.size["height"]
    builder = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=5)
    pointer = builder.pointer_action
    for stroke in strokes:
        points = [(round((x - 0.5) * width), round((y - 0.5) * height)) for x, y in stroke]
        pointer.move_to(canvas, *points[0])
        pointer.pointer_down()
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            steps = max(1, round(max(abs(x1 - x0), abs(y1 - y0)) / 12))
            for i in range(1, steps + 1):
                pointer.move_to(canvas, x0 + (x1 - x0) * i // steps, y0 + (y1 - y0) * i // steps)
        pointer.pointer_up()
    builder.perform()


def wait_for_number(driver, timeout=20):
    """Wait until the number reader shows the answer to its latest request; return (state, text)."""
    def settled(d):
        return d.execute_script(
            "const r = document.getElementById('number-result');"
            "return r.dataset.state !== 'empty' && r.dataset.busy === 'false'"
            " ? [r.dataset.state, document.getElementById('number-text').textContent] : null;")
    return tuple(WebDriverWait(driver, timeout, poll_frequency=0.05).until(settled))


@pytest.mark.parametrize("text", sorted(NUMBER))
def test_a_written_number_is_read_with_a_box_per_digit(browser, server_url, text, tmp_path):
    browser.get(server_url)
    pad = browser.find_element(By.ID, "number-pad")
    assert pad.size["width"] > 2.5 * pad.size["height"]  # the wide pad
    draw_wide(browser, "number-pad", NUMBER[text])
    assert wait_for_number(browser) == ("done", text)
    listed = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#number-digits li")]
    assert [item.split(" ")[0] for item in listed] == list(text) and all("%" in item for item in listed)
    # the boxes are drawn over the pad: blue (or red, unsure) pixels in each digit's part of it
    columns = browser.execute_script(
        "const c = document.getElementById('number-boxes');"
        "const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const seen = new Array(10).fill(0);"
        "for (let i = 3; i < data.length; i += 4) if (data[i] > 0) seen[Math.floor(((i - 3) / 4 % c.width) * 10 / c.width)]++;"
        "return seen;")
    inked = [i for i, count in enumerate(columns) if count]
    assert inked and min(inked) >= 1 and max(inked) <= 8 and len(inked) >= len(text)
    announced = browser.find_element(By.ID, "number-announce").get_attribute("textContent")
    assert announced == "Read the number " + " ".join(text) + "."
    browser.save_screenshot(str(tmp_path / f"number-{text}.png"))
    if text == "402" and os.environ.get("DIGIT_APP_NUMBER_SCREENSHOT"):
        browser.execute_script("document.getElementById('number-heading').scrollIntoView()")
        browser.save_screenshot(os.environ["DIGIT_APP_NUMBER_SCREENSHOT"])
    browser.find_element(By.ID, "number-clear").click()
    assert browser.find_element(By.ID, "number-text").text == "–"
    assert browser.execute_script(
        "const c = document.getElementById('number-boxes');"
        "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0);") is False


def test_number_reader_says_when_there_is_no_number(browser, server_url, tmp_path):
    browser.get(server_url)
    blank = tmp_path / "blank-wide.png"
    Image.new("RGB", (600, 180), "white").save(blank)
    browser.find_element(By.ID, "number-file").send_keys(str(blank))
    assert wait_for_number(browser) == ("error", "?")
    assert "no number found" in browser.find_element(By.ID, "number-message").text.lower()
