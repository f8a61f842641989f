"""`make lab`: JupyterLab on the workbook, for root and non-root users, with or without a display.

Jupyter refuses to run as root unless told, and tries to open a browser that a headless machine
(a container, a cloud VM, WSL without a display) does not have. This launcher decides both, keeps
the server on 127.0.0.1 unless asked otherwise, and prints the URL with its token as the last line
once the server answers, so it can be opened elsewhere or through a forwarded port.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import paths

__all__ = ["has_display", "free_port", "lab_command", "main"]

START_PAGE = "notebooks/00_baseline.ipynb"
READY_TIMEOUT_S = 120
SETTLE_S = 1.5   # JupyterLab's extensions keep logging for a moment after the server answers


class _Relay(threading.Thread):
    """Copies JupyterLab's output to ours line by line and notes when it last spoke, so the URL
    can be printed once the start-up messages are over and stay the last line."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.last, self.lock = stream, time.monotonic(), threading.Lock()

    def run(self):
        for line in self.stream:
            with self.lock:
                sys.stdout.write(line)
                sys.stdout.flush()
                self.last = time.monotonic()

    def wait_quiet(self, quiet_s: float = SETTLE_S, limit_s: float = 15.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() - self.last < quiet_s and time.monotonic() < deadline:
            time.sleep(0.1)


def has_display() -> bool:
    """True where a browser could open here: macOS, Windows, or a Linux X11/Wayland session."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def free_port(ip: str, start: int = 8888, tries: int = 50) -> int:
    """The first port from ``start`` that nobody listens on at ``ip``."""
    for port in range(start, start + tries):
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                continue
            return port
    raise SystemExit(f"make lab: no free port in {start}-{start + tries - 1} on {ip}; "
                     "pass one with `make lab PORT=...`")


def lab_command(ip: str, port: int, open_browser: bool, as_root: bool) -> list[str]:
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [str(jupyter), "lab", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.root_dir={paths.repo_root()}",
           f"--LabApp.default_url=/lab/tree/{START_PAGE}"]
    if not open_browser:
        cmd.append("--no-browser")
    if as_root:
        cmd.append("--allow-root")
    return cmd


def _wait_ready(proc: subprocess.Popen, port: int, token: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"make lab: JupyterLab exited with code {proc.returncode} before it "
                             "was ready; its messages are above.")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                proc.terminate()
                raise SystemExit(f"make lab: JupyterLab did not answer on port {port} within "
                                 f"{READY_TIMEOUT_S} s.")
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgelab.lab", description=__doc__)
    parser.add_argument("--ip", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: the first free one from 8888)")
    args = parser.parse_args(argv)
    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        parser.error(f"--ip {args.ip!r} is not an IP address; use 127.0.0.1 (default) or, "
                     "to open the server to the network, 0.0.0.0")
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error(f"--port {args.port} is out of range; use 1-65535")

    say = lambda msg: print(f"make lab: {msg}", flush=True)  # noqa: E731
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        say("running as root (a container or VM?): passing --allow-root. Jupyter only warns "
            "because a root server can change the whole machine; this one listens on "
            f"{args.ip}{' only' if ip.is_loopback else ''} and needs its token.")
    if not ip.is_loopback:
        say(f"WARNING: listening on {args.ip}, not 127.0.0.1: anyone who can reach this port "
            "and has the token can run any code on this machine as this user.")
    open_browser = has_display()
    if not open_browser:
        say("no display here: not opening a browser. Open the URL below in a browser on this "
            "machine, or forward the port from another computer (README, section `make lab`).")
    port = args.port or free_port(args.ip)
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    # The token goes through the environment, not the command line, which other users can read.
    env = dict(os.environ, JUPYTER_TOKEN=token)
    proc = subprocess.Popen(lab_command(args.ip, port, open_browser, as_root), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    relay = _Relay(proc.stdout)
    relay.start()
    # Forward a polite stop to JupyterLab and wait for it to shut its kernels down.
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        _wait_ready(proc, port, token)
        relay.wait_quiet()
        host = "127.0.0.1" if ip.is_loopback or ip.is_unspecified else args.ip
        with relay.lock:
            print(f"JupyterLab is ready (Ctrl-C stops it). Open:\n"
                  f"http://{host}:{port}/lab/tree/{START_PAGE}?token={token}", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
    rc = proc.wait()
    # Stopped on request (Ctrl-C, or SIGTERM forwarded above) is a normal end, not a failure.
    return 0 if rc in (-signal.SIGTERM, -signal.SIGINT) else rc


if __name__ == "__main__":
    sys.exit(main())
