"""The web console in a real browser: headless Chromium driven by Selenium against a running local stack.

One stack serves the module: a small generated dataset is published and its run (two one-epoch trials,
a one-epoch instrumented run) is watched on the page until it says "deployed"; a photo picked on the page
shows five labelled bars whose probabilities are the API's for the same bytes; a dropped text file shows
the API's 415 message in words; a second dataset's model is deployed, and "Serve this one" on the first
puts it back on the endpoint, as POST /predict then shows. Screenshots at desktop and phone width go to
``$DOGBREEDS_SCREENSHOTS`` (default /tmp/i13-console).

Chromium and chromedriver come from Debian (``apt-get install chromium chromium-driver``; ``.ci/run``
installs them). Without them the module is skipped, except on CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from local_support import http, wait_for
from training_support import SMALL

from dogbreeds.stack import LocalStack, local_config
from dogbreeds.synthetic import generate_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(os.environ.get("DOGBREEDS_SCREENSHOTS", "/tmp/i13-console"))
DESKTOP, PHONE = (1280, 900), (390, 844)
RUN_SECONDS = 300          # a bound, not a measure: one run takes well under a minute here

if not (CHROMIUM and CHROMEDRIVER):
    missing = "chromium and chromedriver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"the console's browser tests need {missing}; .ci/run installs them", pytrace=False)
    pytest.skip(f"{missing} are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = local_config("quick", trials=2, parallel=2, seed=3, trial_epochs=1, epochs=1, accuracy_floor=0.0)
    with LocalStack(tmp_path_factory.mktemp("console") / "stack", config=config, cores=2) as running:
        yield running


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    roots = {}
    for name, seed in (("dogs", 1), ("pups", 2)):
        roots[name] = tmp_path_factory.mktemp(name)
        generate_dataset(roots[name], num_classes=5, train_per_class=12, valid_per_class=4, test_per_class=4,
                         seed=seed, **SMALL)
    return roots


def publish(stack, root: Path, name: str) -> None:
    for path in sorted(root.rglob("*.jpg")):
        stack.s3.upload_file(str(path), stack.config.bucket, f"datasets/{name}/{path.relative_to(root)}")
    stack.s3.put_object(Bucket=stack.config.bucket, Key=f"datasets/{name}/_READY", Body=name.encode())


def stage(driver) -> str:
    return driver.find_element(By.ID, "stage").text


def served_model(stack):
    view = stack.plane.status()
    run = view["run"] or {}
    if "Failed" in (run.get("tuning_status"), run.get("training_status")):
        raise AssertionError(f"the run failed: {json.dumps(run)[:2000]}")
    deployed, endpoint = view["deployed"] or {}, view["endpoint"] or {}
    return deployed.get("model_name") if deployed.get("deployment") == "Serving" and \
        endpoint.get("status") == "InService" else None


def shoot(driver, name: str, section: str) -> None:
    """Screenshots of ``section`` at desktop and phone width (Chromium's device emulation, the whole section)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                                      "deviceScaleFactor": 1, "mobile": label == "phone"})
        time.sleep(0.5)               # the page redraws its charts at the new width (its resize handler)
        top, tall = driver.execute_script(
            "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
            "return [r.top + window.scrollY, r.height];", section)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": max(0, top - 8), "width": width, "height": min(tall + 16, 4000), "scale": 1}})
        (SCREENSHOTS / f"{name}-{label}.png").write_bytes(base64.b64decode(shot["data"]))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_run_is_watched_on_the_page_from_tuning_to_deployed_with_its_trials(browser, stack, datasets):
    browser.get(stack.api_url + "/")
    WebDriverWait(browser, 10).until(lambda d: stage(d) == "waiting for a dataset")
    publish(stack, datasets["dogs"], "dogs")
    WebDriverWait(browser, RUN_SECONDS).until(
        lambda d: stage(d) == "tuning" and d.find_elements(By.CSS_SELECTOR, "#trials tbody tr[data-trial]"))
    shoot(browser, "pipeline-tuning", "pipeline")
    WebDriverWait(browser, RUN_SECONDS, poll_frequency=1).until(lambda d: stage(d) == "deployed")

    view = stack.plane.status()
    trials = stack.sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=view["run"]["tuning_job"])["TrainingJobSummaries"]
    rows = {row.get_attribute("data-trial"): row.find_elements(By.TAG_NAME, "td")
            for row in browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr[data-trial]")}
    assert sorted(rows) == sorted(t["TrainingJobName"] for t in trials) and len(rows) == 2
    for trial in trials:
        cells = [cell.text for cell in rows[trial["TrainingJobName"]]]
        objective = trial["FinalHyperParameterTuningJobObjectiveMetric"]
        assert cells[1] == trial["TrainingJobStatus"] == "Completed"
        assert cells[3] == f"{objective['MetricName']} {objective['Value']:.4f}"
        assert all(f"{name}=" in cells[2] for name in trial["TunedHyperParameters"])
        assert cells[4] == "no"
    lines = browser.find_elements(By.CSS_SELECTOR, "#trial-chart polyline")
    assert sorted(line.get_attribute("data-series") for line in lines) == sorted(rows)
    assert browser.find_element(By.ID, "gate").text == view["run"]["gate"]["reason"]
    assert view["deployed"]["model_name"] in browser.find_element(By.ID, "endpoint").text
    rules = browser.find_elements(By.CSS_SELECTOR, "#rules tbody tr[data-rule]")
    assert len(rules) > 3
    report = browser.find_element(By.CSS_SELECTOR, "#report a").get_attribute("href")
    with urllib.request.urlopen(report) as answer:
        assert b"<html" in answer.read(2000).lower()


def bars_of(card):
    return [(bar.get_attribute("data-label"), float(bar.get_attribute("data-probability")))
            for bar in card.find_elements(By.CSS_SELECTOR, ".bar")]


def test_a_picked_photo_shows_five_labelled_bars_with_the_apis_probabilities(browser, stack, datasets, tmp_path):
    image = sorted((datasets["dogs"] / "test").rglob("*.jpg"))[0]
    photo = tmp_path / "rex.jpg"
    shutil.copy(image, photo)
    status, answer = http("POST", f"{stack.api_url}/predict", photo.read_bytes(), "image/jpeg")
    assert status == 200
    browser.get(stack.api_url + "/")
    browser.find_element(By.ID, "pick").send_keys(str(photo))
    card = WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '.card[data-file="rex.jpg"]')
        if d.find_elements(By.CSS_SELECTOR, '.card[data-file="rex.jpg"] .bar') else None)
    expected = [(p["label"], p["probability"]) for p in answer["predictions"]]
    assert len(expected) == 5 and bars_of(card) == expected
    shown = [bar.find_element(By.CSS_SELECTOR, ".value").text for bar in card.find_elements(By.CSS_SELECTOR, ".bar")]
    assert shown == [f"{100 * p:.1f}%" for _, p in expected]
    shoot(browser, "try-a-photo", "try")


def test_a_dropped_text_file_shows_the_apis_4xx_message(browser, stack):
    status, answer = http("POST", f"{stack.api_url}/predict", b"just some words\n", "text/plain")
    assert 400 <= status < 500
    browser.get(stack.api_url + "/")
    browser.execute_script("""
        const transfer = new DataTransfer();
        transfer.items.add(new File(["just some words\\n"], "notes.txt", {type: "text/plain"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
    """)
    error = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '.card[data-file="notes.txt"] .error'))
    assert error.text == f"HTTP {status} {answer['Code']}: {answer['Message']}"


def test_serve_this_one_puts_the_earlier_model_back_on_the_endpoint(browser, stack, datasets):
    first = served_model(stack)
    image = sorted((datasets["dogs"] / "test").rglob("*.jpg"))[0].read_bytes()
    _, by_first = http("POST", f"{stack.api_url}/predict", image, "image/jpeg")
    publish(stack, datasets["pups"], "pups")
    second = wait_for(lambda: (served_model(stack) or first) != first and served_model(stack), RUN_SECONDS,
                      "the second model to serve")
    _, by_second = http("POST", f"{stack.api_url}/predict", image, "image/jpeg")
    assert by_second != by_first          # two models answer differently: the check below can tell them apart

    browser.get(stack.api_url + "/#models")
    WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tbody tr[data-model]")) == 2)
    browser.find_element(By.ID, "reason").send_keys("the pups model is worse on dogs")

    def press_serve(driver) -> bool:
        """Click the first model's button once it is enabled (the table is redrawn when the endpoint changes)."""
        buttons = driver.find_elements(By.CSS_SELECTOR, f'#history tbody tr[data-model="{first}"] button.serve')
        if not (buttons and buttons[0].is_enabled()):
            return False
        buttons[0].click()
        return True
    WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(press_serve)
    WebDriverWait(browser, 30).until(lambda d: "chosen by local user" in d.find_element(By.ID, "serve-message").text)
    wait_for(lambda: served_model(stack) == first, RUN_SECONDS, "the first model to serve again")
    _, now = http("POST", f"{stack.api_url}/predict", image, "image/jpeg")
    assert now == by_first

    def latest_choice(driver):
        """The newest history row's cells, once the page shows three and the endpoint serving its model."""
        rows = driver.find_elements(By.CSS_SELECTOR, "#history tbody tr[data-model]")
        cells = [cell.text for cell in rows[0].find_elements(By.TAG_NAME, "td")] if len(rows) == 3 else []
        return cells if cells and cells[1].endswith("(serving)") else None
    cells = WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(latest_choice)
    assert cells[1] == f"{first} (serving)" and cells[4] == "local user" and cells[5] == "the pups model is worse on dogs"
    assert second != first
    time.sleep(0.1)
    shoot(browser, "model-history", "models")


# --- the heatmap's drawing, against a stand-in of the API's explain reply ------------------------------------

class ExplainingApi:
    """The console's page, and a POST /predict that answers the explain contract (``?explain=true``: per
    image ``"explanation": {"class", "label", "heatmap": base64 RGBA PNG of the photo's W x H, "width",
    "height"}``) for an image, as the endpoint's handlers do, with a heatmap hot in the top-left quarter."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from dogbreeds.console import Console, Source

        class Nothing(Source):
            def pipeline(self):
                return {"status": {}, "trials": [], "batches": []}
        console, asked = Console(Nothing()), []
        self.asked = asked

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, kind, body):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(*console.answer(self.path))

            def do_POST(self):
                import io

                from PIL import Image
                body = self.rfile.read(int(self.headers["Content-Length"]))
                asked.append(self.path)
                width, height = Image.open(io.BytesIO(body)).size
                heat = Image.new("RGBA", (width, height), (0, 0, 0, 0))
                heat.paste((255, 0, 0, 200), (0, 0, width // 2, height // 2))
                png = io.BytesIO()
                heat.save(png, format="PNG")
                reply = {"predictions": [{"label": "Akita", "class": "002.Akita", "index": 1, "probability": 0.75},
                                         {"label": "Affenpinscher", "class": "001.Affenpinscher", "index": 0,
                                          "probability": 0.25}]}
                if "explain=true" in self.path:
                    reply["explanation"] = {"class": "002.Akita", "label": "Akita", "width": width, "height": height,
                                            "heatmap": base64.b64encode(png.getvalue()).decode()}
                self._send(200, "application/json", json.dumps(reply).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        import threading
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def test_explain_draws_the_heatmap_over_each_photo_at_its_size(browser, tmp_path):
    from PIL import Image
    photos = []
    for name, size in (("wide.jpg", (240, 160)), ("tall.jpg", (120, 200))):
        Image.new("RGB", size, (90, 140, 60)).save(tmp_path / name)
        photos.append(tmp_path / name)
    with ExplainingApi() as api:
        browser.get(api.url + "/")
        browser.find_element(By.ID, "explain").click()
        browser.find_element(By.ID, "pick").send_keys("\n".join(str(p) for p in photos))   # several at once
        for photo in photos:
            card = WebDriverWait(browser, 20).until(
                lambda d, name=photo.name: d.find_element(By.CSS_SELECTOR, f'.card[data-file="{name}"]')
                if d.find_elements(By.CSS_SELECTOR, f'.card[data-file="{name}"] img.heat') else None)
            heat = card.find_element(By.CSS_SELECTOR, "img.heat")
            original = card.find_element(By.CSS_SELECTOR, "img.original")
            natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", heat)
            assert natural == list(Image.open(photo).size)
            assert heat.rect == original.rect                  # drawn over the photo, at the size it is shown
            assert bars_of(card) == [("Akita", 0.75), ("Affenpinscher", 0.25)]
        assert sorted(api.asked) == ["/predict?explain=true"] * 2
        shoot(browser, "try-a-photo-explained", "try")
