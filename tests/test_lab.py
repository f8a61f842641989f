"""`make lab`, the command a learner types: run for real (as whoever runs the tests: root in CI),
headless, on a free port. The notebook must come back through the server's contents API with the
printed token, and be refused without it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from edgelab import lab
from edgelab.paths import ROOT as REPO_ROOT

START_TIMEOUT_S = 180


def _lab_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "JUPYTER_TOKEN", "IP", "PORT")}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    return env


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.heavy   # starts JupyterLab: 12 s of `make check`'s two minutes
def test_make_lab_serves_the_workbook_only_with_its_token(tmp_path):
    port = lab.free_port("127.0.0.1", start=18888)
    log = tmp_path / "make-lab.log"
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"PORT={port}"], cwd=REPO_ROOT,
                            env=_lab_env(tmp_path), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        url = None
        while url is None:
            lines = log.read_text().splitlines()
            printed = [ln for ln in lines if ln.startswith("http://") and "token=" in ln]
            if printed:
                url = printed[-1]
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make lab printed no URL (exit {proc.poll()}):\n" + log.read_text())
            else:
                time.sleep(0.5)
        time.sleep(1)  # anything printed right after the URL would now be in the log
        text = log.read_text()
        assert text.rstrip().splitlines()[-1] == url, "the URL is not the last line printed"
        if os.geteuid() == 0:
            assert "--allow-root" in text and "127.0.0.1" in text
        assert "not opening a browser" in text

        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port == port
        token = urllib.parse.parse_qs(parts.query)["token"][0]
        # /lab/tree/<path relative to the server's root> -> /api/contents/<same path>
        rel = parts.path.removeprefix("/lab/tree/")
        assert rel.endswith("00_baseline.ipynb")
        api = f"http://127.0.0.1:{port}/api/contents/{rel}"
        status, body = _get(f"{api}?token={token}")
        assert status == 200
        model = json.loads(body)
        assert model["type"] == "notebook" and model["content"]["cells"]
        status, _ = _get(api)
        assert status in (401, 403), f"the server answered {status} without the token"
        status, _ = _get(f"{api}?token={'0' * len(token)}")
        assert status in (401, 403), f"the server answered {status} to a wrong token"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_lab_refuses_an_address_that_is_not_an_ip(capsys):
    with pytest.raises(SystemExit):
        lab.main(["--ip", "everyone"])
    assert "is not an IP address" in capsys.readouterr().err


def test_lab_command_adds_allow_root_only_for_root_and_no_browser_only_without_display():
    root_headless = lab.lab_command("127.0.0.1", 8888, open_browser=False, as_root=True)
    user_desktop = lab.lab_command("127.0.0.1", 8888, open_browser=True, as_root=False)
    assert "--allow-root" in root_headless and "--no-browser" in root_headless
    assert "--allow-root" not in user_desktop and "--no-browser" not in user_desktop
    assert not any("token" in arg.lower() for arg in root_headless), \
        "the token must not be on the command line, where other users can read it"


def test_has_display_follows_the_display_variables(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not lab.has_display()
    monkeypatch.setenv("DISPLAY", ":0")
    assert lab.has_display()
