"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the demo tests.

`unavailable_reason()` says why no browser can be started (None when one can); `start()`
returns a Selenium WebDriver. The network may be closed: the flags keep Chromium from
trying to reach Google's services (without them it can hang on connection attempts).
"""

import os
import shutil
import tempfile

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver", "chromium-driver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1100")


def _which(names):
  for name in names:
    path = shutil.which(name)
    if path:
      return path
  return None


def unavailable_reason():
  """None if Chromium, its driver and Selenium are all there, else what is missing."""
  try:
    import selenium  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return "selenium is not installed (pip install -e '.[test]')"
  if not _which(CHROMIUM_NAMES):
    return "no chromium binary (apt-get install chromium chromium-driver)"
  if not _which(DRIVER_NAMES):
    return "no chromedriver (apt-get install chromium-driver)"
  return None


def start():
  """A headless Chromium WebDriver with a fresh profile (removed by `stop`)."""
  os.environ.setdefault("SE_OFFLINE", "true")  # Never let Selenium Manager download drivers.
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  profile = tempfile.mkdtemp(prefix="mm_tf_chromium_")
  options = webdriver.ChromeOptions()
  options.binary_location = _which(CHROMIUM_NAMES)
  for flag in FLAGS:
    options.add_argument(flag)
  options.add_argument(f"--user-data-dir={profile}")
  driver = webdriver.Chrome(service=Service(executable_path=_which(DRIVER_NAMES)), options=options)
  driver.mm_tf_profile = profile
  return driver


def stop(driver):
  try:
    driver.quit()
  finally:
    shutil.rmtree(getattr(driver, "mm_tf_profile", ""), ignore_errors=True)


# JS: natural size and the distinct RGBA colours of an <img> (drawn into a canvas).
IMAGE_COLOURS_JS = """
const img = document.getElementById(arguments[0]);
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(img, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
const colours = new Set();
for (let i = 0; i < data.length; i += 4) colours.add([data[i], data[i+1], data[i+2], data[i+3]].join(','));
return [canvas.width, canvas.height, Array.from(colours)];
"""


def image_colours(driver, element_id):
  """(width, height, {(r, g, b, a), ...}) of the picture shown by <img id=element_id>."""
  width, height, colours = driver.execute_script(IMAGE_COLOURS_JS, element_id)
  return width, height, {tuple(int(v) for v in c.split(",")) for c in colours}
