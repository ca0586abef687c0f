"""A real check in a browser: JupyterLab on localhost, the notebooks in headless Chromium as a person uses
them (open, Run All), a slider moved, the plot redrawn. Skips when Chromium/chromedriver (Debian:
apt-get install chromium chromium-driver) or selenium are missing."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from absld_core import train
from absld_core.study import ROOT
from train_helpers import tiny

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no Chromium/chromedriver installed"),
              pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    import papermill as pm

    t = train(tiny("t", "natural", tmp_path, optim__epochs=2))
    run = train(tiny("a", "absld", tmp_path, optim__epochs=3,
                     method={"name": "absld", "teacher": {"checkpoint": str(t)}, "eta": 0.3}))
    nb = tmp_path / "explorer.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "05_temperature_explorer.ipynb"), str(nb), prepare_only=True,
                        parameters={"run": str(run), "interactive": True, "figure_dir": str(tmp_path / "fig")},
                        kernel_name="absld")
    yield from _jupyterlab(tmp_path)


@pytest.fixture
def lab_after_study(tmp_path):
    """A tiny smoke study in tmp_path (runs/ and figures/), and the repository's own notebooks/ beside it,
    as a clone looks after `make study`."""
    from absld_core.study import run_study
    from test_study import TINY

    assert run_study("smoke", [t for t in TINY if not t.startswith("05_")], out_root=tmp_path, log=lambda *_: None) == 0
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    yield from _jupyterlab(tmp_path)


@pytest.fixture
def lab_on_tiny_study(tmp_path):
    """A finished tiny study made by `absld study` with a preset file of the user's, and the repository's
    notebooks beside it with one line changed, `preset = '<that file>'`, as a user opens them."""
    from absld_core.study import run_study
    from test_spine import write_preset

    preset = write_preset(tmp_path)
    assert run_study(str(preset), out_root=tmp_path, log=lambda *_: None) == 0
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    for nb in (tmp_path / "notebooks").glob("*.ipynb"):
        book = json.loads(nb.read_text())
        cell = next(c for c in book["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        src = "".join(cell["source"])
        assert src.startswith("preset = 'smoke'")
        cell["source"] = src.replace("preset = 'smoke'", f"preset = {str(preset)!r}", 1)
        nb.write_text(json.dumps(book))
    yield from _jupyterlab(tmp_path)


def _lab_settings(config_dir: Path) -> None:
    """Every cell rendered (windowing off: with JupyterLab's default 'contentVisibility' a cell scrolled
    out of view has no visible prompt text, and a notebook whose outputs grow looks unfinished), and no
    news pop-up over the page."""
    user = config_dir / "lab" / "user-settings" / "@jupyterlab"
    for ext, name, settings in (("notebook-extension", "tracker", {"windowingMode": "none"}),
                                ("apputils-extension", "notification", {"fetchNews": "false",
                                                                        "checkForUpdates": False})):
        (user / ext).mkdir(parents=True, exist_ok=True)
        (user / ext / f"{name}.jupyterlab-settings").write_text(json.dumps(settings))


def _jupyterlab(tmp_path):
    port, token = _free_port(), "absldtest"
    _lab_settings(tmp_path / "jcfg")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt")}
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
                             "--ServerApp.open_browser=False", "--LabApp.news_url=", "--allow-root"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
    yield url, token, tmp_path
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _driver(tmp):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1600", f"--user-data-dir={tmp / 'chrome'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _run_all_and_wait_for_plots(driver, url, token, path, n=2):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/lab/tree/{path}?token={token}")
    wait = WebDriverWait(driver, 180, poll_frequency=0.5)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status='idle']")
               or d.find_elements(By.XPATH, "//*[contains(@title, 'Kernel status: Idle')]")
               or d.find_elements(By.XPATH, "//*[contains(text(), 'Idle')]"))
    [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == "Run"][0].click()
    wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells"])
    [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells"][0].click()

    def shown(d):
        try:
            now = [i.get_attribute("src") for i in d.find_elements(
                By.CSS_SELECTOR, ".widget-output img, .jupyter-widgets-output-area img")]
        except StaleElementReferenceException:
            return False
        return now if len(now) >= n else False

    return wait.until(shown)


def test_explorer_opened_directly_after_a_study_shows_its_plots_without_retraining(lab_after_study):
    """The repository's 05 notebook opened as is (kernel in notebooks/) after a study: it finds the
    study's ABSLD run at the repository root and draws, and no run is trained or changed."""
    url, token, tmp = lab_after_study
    runs = tmp / "runs" / "smoke" / "s0"
    before = {p.name: (p / "history.jsonl").read_text() for p in runs.iterdir() if (p / "history.jsonl").is_file()}
    driver = _driver(tmp)
    try:
        assert len(_run_all_and_wait_for_plots(driver, url, token, "notebooks/05_temperature_explorer.ipynb")) >= 2
    finally:
        driver.quit()
    after = {p.name: (p / "history.jsonl").read_text() for p in runs.iterdir() if (p / "history.jsonl").is_file()}
    assert after == before
    assert not (tmp / "notebooks" / "runs").exists()


def test_moving_a_slider_redraws_the_plot(lab):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, token, tmp = lab
    driver = _driver(tmp)
    try:
        before = _run_all_and_wait_for_plots(driver, url, token, "explorer.ipynb")
        handle = driver.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle, .jupyter-widgets .noUi-handle")[0]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
        handle.click()
        for _ in range(25):
            handle.send_keys(Keys.ARROW_RIGHT)

        def changed(d):
            try:
                now = [i.get_attribute("src") for i in d.find_elements(
                    By.CSS_SELECTOR, ".widget-output img, .jupyter-widgets-output-area img")]
            except StaleElementReferenceException:  # the output area is being redrawn
                return False
            return now if len(now) >= 2 and now[0] != before[0] else False

        after = WebDriverWait(driver, 120, poll_frequency=0.5).until(changed)
        assert after[0] != before[0]
        # the fine-tune button: its progress inside the widget, then the before/after table with intervals
        button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button") if "Fine-tune" in b.text)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
        button.click()
        WebDriverWait(driver, 300, poll_frequency=1).until(
            lambda d: "after - before [95% CI]" in d.find_element(By.TAG_NAME, "body").text)
        assert "fine-tune failed" not in driver.find_element(By.TAG_NAME, "body").text
        driver.save_screenshot(str(tmp / "explorer.png"))
    finally:
        driver.quit()


def _kernel_state(url, token, path) -> str | None:
    """The execution state of the kernel of the session open on `path`, from the server's REST API."""
    try:
        with urllib.request.urlopen(f"{url}/api/sessions?token={token}", timeout=5) as r:
            sessions = json.load(r)
    except OSError:
        return None
    for s in sessions:
        if s.get("path", "").endswith(path) and s.get("kernel"):
            return s["kernel"].get("execution_state")
    return None


def _run_all_until_done(driver, url, token, path, timeout=900):
    """Open `path`, wait until its kernel is idle (REST API), click Run All, and wait until every code
    cell has run (an execution count in each prompt) and the kernel is idle again. Run All is clicked
    once more when no cell starts within 20 s (a busy machine can swallow the first click)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/lab/tree/{path}?token={token}")
    wait = WebDriverWait(driver, 180, poll_frequency=0.5)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"))
    wait.until(lambda d: _kernel_state(url, token, path) == "idle")
    # the notebook in front (tabs opened before stay in the page, hidden)
    front = ".jp-NotebookPanel:not(.lm-mod-hidden)"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{front} .jp-CodeCell"))
    n_code = len(driver.find_elements(By.CSS_SELECTOR, f"{front} .jp-CodeCell"))

    def prompts(d):
        return [e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, f"{front} .jp-CodeCell .jp-InputArea-prompt")]

    def run_all():
        [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == "Run"][0].click()
        wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells"])
        [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells"][0].click()

    def started(d):
        return any(p not in ("[ ]:", "") for p in prompts(d)) or _kernel_state(url, token, path) == "busy"

    run_all()
    try:
        WebDriverWait(driver, 20, poll_frequency=0.5).until(started)
    except Exception:  # noqa: BLE001 - selenium's TimeoutException: click once more
        run_all()
        WebDriverWait(driver, 60, poll_frequency=0.5).until(started)

    def done(d):
        ps = prompts(d)
        return (len(ps) == n_code and all(p[:1] == "[" and p[1:-2].strip().isdigit() for p in ps)
                and _kernel_state(url, token, path) == "idle")

    try:
        WebDriverWait(driver, timeout, poll_frequency=1.0).until(done)
    except Exception:  # noqa: BLE001 - keep what the page showed, for the failure message
        driver.save_screenshot(f"/tmp/absld-browser-{Path(path).stem}.png")
        raise AssertionError(f"{path}: not every cell ran (prompts {prompts(driver)}, kernel "
                             f"{_kernel_state(url, token, path)}); screenshot /tmp/absld-browser-{Path(path).stem}.png")
    stderr = driver.find_elements(By.CSS_SELECTOR,
                                  f"{front} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [e.text for e in stderr if "Traceback" in e.text or "Error" in e.text]
    images = driver.find_elements(By.CSS_SELECTOR, f"{front} .jp-OutputArea-output img")
    return images, tracebacks


FIGURES = {"01_smoothness_vs_fairness": 2, "02_teacher": 1, "03_students": 0, "04_class_wise_robustness": 4,
           "05_temperature_explorer": 2}


def test_every_notebook_opened_on_a_finished_study_runs_all_without_training(lab_on_tiny_study):
    """Each of the five notebooks, opened in JupyterLab and run with Run All, shows its figures, and no
    run directory of the study is trained, retrained, evaluated again or deleted."""
    from test_spine import run_records

    url, token, tmp = lab_on_tiny_study
    before = run_records(tmp / "runs")
    assert len(before) > 100
    driver = _driver(tmp)
    try:
        for nb, n in FIGURES.items():
            images, tracebacks = _run_all_until_done(driver, url, token, f"notebooks/{nb}.ipynb")
            assert not tracebacks, f"{nb}: {tracebacks[0][-2000:]}"
            assert len(images) >= n, f"{nb}: {len(images)} figure(s) shown, expected {n}"
            driver.save_screenshot(str(tmp / f"{nb}.png"))
    finally:
        driver.quit()
    assert run_records(tmp / "runs") == before
    assert not (tmp / "notebooks" / "runs").exists() and not (tmp / "runs" / "smoke").exists()
