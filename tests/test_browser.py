"""A real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright. Each slider
notebook is run (smoke mode) in a temporary copy, its slider is moved with the keyboard as a
learner would, and the accuracy and size the panel shows must change. Screenshots land in
build/browser/.

Needs /usr/bin/chromium (`make browser` installs Debian's package); Playwright cannot download
its own browser here."""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edgelab.paths import ROOT as REPO_ROOT

pytestmark = pytest.mark.heavy   # Chromium and whole notebooks: not in `make check`

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO_ROOT / "build" / "browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
RUN_ALL_TIMEOUT_S = 600  # a smoke run takes about a minute on 2 quiet cores; CI may be busier

# notebook -> (slider label, regex for the accuracy shown, regex for the size shown)
SLIDERS = {
    "01_pruning": ("prune rate", r"accuracy ([\d.]+) %", r"bytes ([\d.]+) MB · gzip ([\d.]+) MB"),
    "02_quantization": ("weight bits", r"accuracy ([\d.]+) %", r"weights ([\d.]+) MB"),
}
# Lab settings for a quiet, deterministic page: no news pop-up, every cell kept in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """JupyterLab serving ``root`` on 127.0.0.1 with a random port and token."""

    def __init__(self, root: Path, tmp: Path):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        settings = tmp / "lab-settings"
        for rel, body in LAB_SETTINGS.items():
            (settings / rel).parent.mkdir(parents=True, exist_ok=True)
            (settings / rel).write_text(json.dumps(body))
        # One torch thread: this test is about the page, and one thread cannot be starved by
        # whatever else shares the CPUs (as on Binder).
        env = dict(os.environ, EDGELAB_SMOKE="1", EDGELAB_RESULTS=str(tmp / "results"),
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
                   JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"))
        self.log = tmp / "lab.log"
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
             "--LabApp.extension_manager=readonly"],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                self.api("/api/status")
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    pytest.fail(f"JupyterLab did not start; its log:\n{self.tail()}")
                time.sleep(0.5)

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def sessions(self, notebook: str) -> list[dict]:
        return [s for s in self.api("/api/sessions") if s["path"] == notebook]

    def kernel_state(self, notebook: str) -> str | None:
        """'starting', 'idle', 'busy', ... of the notebook's kernel; None before it has one."""
        found = self.sessions(notebook)
        return found[0]["kernel"]["execution_state"] if found else None

    def shut_down(self, notebook: str):
        for s in self.sessions(notebook):
            self.api(f"/api/sessions/{s['id']}", method="DELETE")

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text()[-n:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "notebooks"
    root.mkdir()
    lab = Lab(root, tmp)
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=FLAGS, viewport={"width": 1400, "height": 1000})
            try:
                yield lab, root, ctx
            finally:
                ctx.close()
    finally:
        lab.stop()


def _wait(what: str, check, timeout_s: float, lab: Lab, poll_s: float = 1.0):
    """Poll ``check`` until it returns something true; fail saying what we waited for."""
    deadline = time.time() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; "
                        f"kernels {lab.api('/api/kernels')}; JupyterLab log:\n{lab.tail(1500)}")
        time.sleep(poll_s)


PROMPTS_JS = """() => Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
                     .map(e => e.textContent.trim())"""
ERRORS_JS = """() => Array.from(document.querySelectorAll(
                  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
                  .map(e => e.textContent).filter(t => /Error|Traceback/.test(t))"""


def _run_all(page, lab: Lab, name: str):
    """Run All Cells from the menu; wait until every code cell has run or one has failed."""
    path = f"{name}.ipynb"
    _wait(f"{name}: its kernel to start", lambda: lab.kernel_state(path) == "idle", 180, lab)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    t0, idle_polls = time.time(), [0]

    def finished():
        prompts = page.evaluate(PROMPTS_JS)
        if any("*" in p for p in prompts) or lab.kernel_state(path) != "idle":
            idle_polls[0] = 0
            return None
        if all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return "ok"
        # Stopped early only if it stays that way (Lab may not have queued the cells yet).
        idle_polls[0] += 1
        return "stopped" if time.time() - t0 > 10 and idle_polls[0] >= 3 else None

    state = _wait(f"{name} to run all its cells", finished, RUN_ALL_TIMEOUT_S, lab, poll_s=2)
    if state != "ok":
        prompts = page.evaluate(PROMPTS_JS)
        first = next(i for i, p in enumerate(prompts) if not re.fullmatch(r"\[\d+\]:", p))
        cell = page.locator(".jp-CodeCell").nth(first).inner_text()
        errors = page.evaluate(ERRORS_JS)
        pytest.fail(f"{name}: Run All stopped at code cell {first} (prompts {prompts}):\n"
                    f"{cell[:1500]}\nfirst error: {errors[0][-2000:] if errors else '(none shown)'}\n"
                    f"JupyterLab log:\n{lab.tail(1500)}")


def _panel_text(panel) -> str:
    return panel.locator(".widget-output").inner_text()


@pytest.mark.parametrize("name", sorted(SLIDERS))
def test_slider_moved_in_a_real_browser_changes_accuracy_and_size(browser, name):
    lab, root, ctx = browser
    nb = REPO_ROOT / "notebooks" / f"{name}.ipynb"
    if not nb.exists():
        pytest.skip(f"{nb.name} does not exist yet")
    shutil.copy(nb, root / nb.name)  # Lab saves into this copy, never into the committed file
    label, acc_re, size_re = SLIDERS[name]
    page = ctx.new_page()
    try:
        # A workspace of its own: Lab would otherwise reopen the previous test's notebook too.
        page.goto(f"{lab.url}/lab/workspaces/{name}/tree/{nb.name}?reset&token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        _run_all(page, lab, name)

        slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=label))
        assert slider.count() == 1, f"{name}: expected one slider labelled {label!r}, found {slider.count()}"
        panel = page.locator(".widget-vbox", has=slider).last
        handle = slider.locator(".noUi-handle")
        handle.scroll_into_view_if_needed()
        before, value = _panel_text(panel), handle.get_attribute("aria-valuenow")
        shown = (re.search(acc_re, before), re.search(size_re, before))
        assert all(shown), f"{name}: the panel shows no accuracy/size text:\n{before}"

        # Keyboard, as a learner would: to the far end from where the notebook left it.
        handle.focus()
        at_min = float(value) <= float(handle.get_attribute("aria-valuemin"))
        page.keyboard.press("End" if at_min else "Home")
        _wait(f"{name}: the slider to move", lambda: handle.get_attribute("aria-valuenow") != value, 10, lab)

        def updated():
            text = _panel_text(panel)
            status = panel.locator(".widget-html").last.inner_text()
            return text if text != before and "computing" not in status else None

        after = _wait(f"{name}: the panel to show the new result", updated, 120, lab, poll_s=0.5)
        moved_to = handle.get_attribute("aria-valuenow")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"))
        new = (re.search(acc_re, after), re.search(size_re, after))
        assert all(new), f"{name}: after the move the panel shows no accuracy/size text:\n{after}"
        assert new[0].groups() != shown[0].groups(), (
            f"{name}: accuracy text did not change moving {label} {value} -> {moved_to}:\n{after}")
        assert new[1].groups() != shown[1].groups(), (
            f"{name}: size text did not change moving {label} {value} -> {moved_to}:\n{after}")
    finally:
        page.close()
        lab.shut_down(nb.name)


FIT_JS = """(el) => ({scroll: el.scrollWidth, client: el.clientWidth,
                      natural: el.tagName === 'IMG' ? el.naturalWidth : null,
                      shown: el.getBoundingClientRect().width})"""


def test_pareto_figure_and_results_table_fit_a_1280px_window_without_scrolling(browser, tmp_path):
    """06 executed (smoke sizes), opened as a learner would at 1280 px with the file browser open:
    the Pareto figure is shown at its own size (not scaled down) and neither it nor the results
    table needs horizontal scrolling. Screenshots: build/browser/06_pareto.png, 06_table.png."""
    lab, root, ctx = browser
    name = "06_pipeline"
    src = REPO_ROOT / "notebooks" / f"{name}.ipynb"
    env = dict(os.environ, EDGELAB_SMOKE="1", EDGELAB_RESULTS=str(tmp_path / "results"))
    subprocess.run([sys.executable, "-m", "papermill", str(src), str(root / src.name), "-k", "python3",
                    "--cwd", str(src.parent), "--no-progress-bar", "-p", "SMOKE", "True"],
                   env=env, check=True, capture_output=True, timeout=RUN_ALL_TIMEOUT_S)
    page = ctx.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    try:
        page.goto(f"{lab.url}/lab/workspaces/fit/tree/{src.name}?reset&token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        figure = page.locator(".jp-CodeCell", has_text="pareto=True").locator(".jp-OutputArea-output img")
        table = page.locator(".jp-OutputArea-output table").first
        figure.wait_for(timeout=60_000)
        SHOTS.mkdir(parents=True, exist_ok=True)
        for what, el, shot in (("Pareto figure", figure.first, "06_pareto.png"), ("results table", table, "06_table.png")):
            el.scroll_into_view_if_needed()
            el.screenshot(path=str(SHOTS / shot))
            area = el.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
            fit = area.evaluate(FIT_JS)
            assert fit["scroll"] <= fit["client"] + 1, (
                f"the {what} needs horizontal scrolling at 1280 px: {fit['scroll']} px of content in "
                f"{fit['client']} px (screenshot build/browser/{shot})")
            if what == "Pareto figure":
                img = el.evaluate(FIT_JS)
                assert img["shown"] >= img["natural"] - 1, (
                    f"the Pareto figure is scaled down from {img['natural']} to {img['shown']:.0f} px "
                    f"at 1280 px (screenshot build/browser/{shot})")
    finally:
        page.close()
