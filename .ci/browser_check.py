#!/usr/bin/env python3
"""End-to-end check in a real browser: JupyterLab + headless Chromium + ipywidgets.

What it does, each step bounded in time (the whole run stays under ``--timeout`` seconds):

1. copies ``notebooks/`` to a temporary folder (the repository's notebooks are never touched)
   and starts ``jupyter lab`` there on a free localhost port with a random token and private
   config/settings/runtime folders;
2. opens the notebook (default ``00_quickstart.ipynb``) in Debian's ``/usr/bin/chromium``
   (headless, fresh ``--user-data-dir``, background networking off) driven by Playwright;
3. runs all cells from the *Run* menu, waits until every code cell has an execution count and
   fails on any error output;
4. moves the first slider on the page one step (keyboard on the slider handle) and waits until
   the output next to it changes;
5. clicks a frame of the point picker (the picture whose status line reads "token n = ...")
   and waits until its picture and status line change (a new point was picked);
6. saves a screenshot to ``artifacts/browser_check.png`` and shuts everything down.

Exit status 0 on success; otherwise 1 with a one-line reason (the screenshot is still saved when
the page was reached). Needs ``pip install playwright`` and ``apt-get install -y chromium``;
never run ``playwright install``.

Usage: ``python .ci/browser_check.py [--notebook 00_quickstart.ipynb] [--artifacts artifacts]``
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


class CheckFailed(RuntimeError):
    """A step of the check failed; the message says which and why."""


class Deadline:
    """Seconds left before the whole check must be over."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        left = max(self.end - time.monotonic(), 0.0)
        if left <= 0:
            raise CheckFailed("the overall time limit was reached")
        return min(left, cap) if cap is not None else left

    def ms(self, cap: float) -> float:
        return 1000.0 * self.left(cap)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, method: str = "GET", timeout: float = 5.0):
    req = urllib.request.Request(f"{base}{path}", method=method)
    req.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def start_lab(workdir: Path, port: int, token: str, log) -> subprocess.Popen:
    """Start JupyterLab in ``workdir`` with private config folders; returns the process."""
    env = dict(os.environ)
    private = workdir.parent
    for name, sub in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "mpl"),
    ]:
        (private / sub).mkdir(exist_ok=True)
        env[name] = str(private / sub)
    # announcements (news fetch) off: no network, no pop-up over the notebook
    labconfig = private / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        f"--port={port}", "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={workdir}", "--ServerApp.open_browser=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    return subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for_lab(base: str, token: str, proc: subprocess.Popen, deadline: Deadline, budget=60.0):
    end = time.monotonic() + deadline.left(budget)
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise CheckFailed(f"jupyter lab exited early with status {proc.returncode}")
        try:
            api(base, token, "/api/status", timeout=2.0)
            return
        except OSError:
            time.sleep(0.5)
    raise CheckFailed(f"jupyter lab did not answer on {base} within {budget:.0f} s")


def stop_lab(base: str, token: str, proc: subprocess.Popen) -> None:
    """Shut kernels and server down politely, then make sure the process group is gone."""
    if proc.poll() is None:
        try:
            for kernel in api(base, token, "/api/kernels") or []:
                api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE", timeout=10.0)
            api(base, token, "/api/shutdown", method="POST")
        except OSError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


# -- page helpers (JupyterLab 4 / ipywidgets 8 DOM) ---------------------------------------------

JS_CELL_STATE = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const prompts = cells.map(c => (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '');
  const errors = [...document.querySelectorAll(
      '.jp-Notebook [data-mime-type="application/vnd.jupyter.error"]')].map(e => e.textContent);
  return {n: cells.length, prompts: prompts, errors: errors};
}"""

JS_SLIDER_OUTPUT = """(slider) => {
  const cell = slider.closest('.jp-Cell');
  const area = cell ? cell.querySelector('.jp-OutputArea') : document.body;
  const parts = [];
  area.querySelectorAll('.widget-output, img, canvas').forEach(e => {
    parts.push(e.tagName === 'IMG' ? e.src : (e.tagName === 'CANVAS' ? e.toDataURL() : e.innerHTML));
  });
  const readout = slider.querySelector('.widget-readout');
  return {output: parts.join('|'), readout: readout ? readout.textContent : ''};
}"""


def accept_kernel_dialog(page, deadline: Deadline, budget: float = 10.0) -> None:
    """Accept JupyterLab's "Select Kernel" dialog (default kernel) if it shows up."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator(".jp-Dialog .jp-mod-accept").first.click(timeout=deadline.ms(budget))
    except PlaywrightTimeout:
        pass  # no dialog: the notebook's kernelspec was started directly


def run_all_cells(page, deadline: Deadline) -> None:
    """Run > Run All Cells from the menu bar (the keyboard-free path a learner would take)."""
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text="Run").first.click(
        timeout=deadline.ms(20)
    )
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click(timeout=deadline.ms(20))


def wait_for_cells(page, deadline: Deadline, budget: float) -> dict:
    """Wait until every code cell shows an execution count; fail on the first error output."""
    end = time.monotonic() + deadline.left(budget)
    state = {}
    while time.monotonic() < end:
        state = page.evaluate(JS_CELL_STATE)
        if state["errors"]:
            raise CheckFailed("a cell raised an error: " + state["errors"][0].strip()[-400:])
        done = [p.strip() for p in state["prompts"] if p.strip() not in ("[ ]:", "[*]:", "")]
        if state["n"] and len(done) == state["n"]:
            return state
        time.sleep(1.0)
    raise CheckFailed(f"cells did not finish within {budget:.0f} s (prompts: {state.get('prompts')})")


def move_slider(page, deadline: Deadline, budget: float) -> tuple[str, str]:
    """Press ArrowRight on the first slider handle; wait for the output beside it to change."""
    slider = page.locator(".widget-slider").first
    slider.wait_for(state="visible", timeout=deadline.ms(30))
    slider.scroll_into_view_if_needed(timeout=deadline.ms(10))
    before = slider.evaluate(JS_SLIDER_OUTPUT)
    handle = slider.locator(".noUi-handle").first
    handle.focus(timeout=deadline.ms(10))
    page.keyboard.press("ArrowRight")
    end = time.monotonic() + deadline.left(budget)
    after = before
    while time.monotonic() < end:
        after = slider.evaluate(JS_SLIDER_OUTPUT)
        if after["output"] and after["output"] != before["output"]:
            return before["readout"], after["readout"]
        time.sleep(0.5)
    raise CheckFailed(
        f"moving the slider (readout {before['readout']!r} -> {after['readout']!r}) "
        f"did not change its output within {budget:.0f} s"
    )


JS_PICKER = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
  for (const cell of cells) {
    const status = [...cell.querySelectorAll('.widget-html')].find(e => e.textContent.includes('token n ='));
    const img = cell.querySelector('img.widget-image');
    if (status && img) {
      return {status: status.textContent, src: img.src.length + ':' + img.src.slice(-64), index: cells.indexOf(cell)};
    }
  }
  return null;
}"""


def click_picker(page, deadline: Deadline, budget: float) -> tuple[str, str]:
    """Click inside the 4th frame of the point picker; wait for a new status and picture."""
    end = time.monotonic() + deadline.left(budget)
    before = page.evaluate(JS_PICKER)
    if before is None:
        raise CheckFailed("no point picker (a picture with a 'token n =' status line) on the page")
    image = page.locator(".jp-Notebook .jp-Cell").nth(before["index"]).locator("img.widget-image").first
    image.scroll_into_view_if_needed(timeout=deadline.ms(10))
    box = image.bounding_box()
    # frames span 6 %..93 % of the width, the first row 16 %..76 % of the height (cove.app.plots)
    image.click(position={"x": box["width"] * 0.42, "y": box["height"] * 0.45}, timeout=deadline.ms(10))
    after = before
    while time.monotonic() < end:
        after = page.evaluate(JS_PICKER) or before
        if after["status"] != before["status"] and after["src"] != before["src"]:
            return before["status"].split(";")[0], after["status"].split(";")[0]
        time.sleep(0.5)
    raise CheckFailed(f"clicking the point picker did not change it within {budget:.0f} s "
                      f"(status stayed {before['status'][:80]!r})")


def drive_browser(url: str, notebook: str, profile: Path, shot: Path, chromium: str,
                  deadline: Deadline, cells_budget: float) -> str:  # fmt: skip
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000}, timeout=deadline.ms(60),
        )  # fmt: skip
        page = context.pages[0] if context.pages else context.new_page()
        try:
            page.goto(url, timeout=deadline.ms(60))
            page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=deadline.ms(90))
            accept_kernel_dialog(page, deadline)
            # the kernel must be ready before "Run All"
            page.get_by_text("| Idle").first.wait_for(timeout=deadline.ms(90))
            run_all_cells(page, deadline)
            state = wait_for_cells(page, deadline, cells_budget)
            before, after = move_slider(page, deadline, budget=60)
            page.get_by_text("| Idle").first.wait_for(timeout=deadline.ms(30))
            picked_before, picked_after = click_picker(page, deadline, budget=60)
            page.get_by_text("| Idle").first.wait_for(timeout=deadline.ms(30))
            page.screenshot(path=str(shot), timeout=deadline.ms(20))
            return (f"{notebook}: {state['n']} code cells ran; slider {before} -> {after} changed the output; "
                    f"a click picked a new point ({picked_before} -> {picked_after})")
        except (PlaywrightError, CheckFailed) as exc:
            try:
                page.screenshot(path=str(shot), timeout=10_000)
            except PlaywrightError:
                pass
            if isinstance(exc, CheckFailed):
                raise
            raise CheckFailed(f"browser step failed: {str(exc).splitlines()[0]}") from exc
        finally:
            context.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", default="00_quickstart.ipynb", help="file in --notebooks")
    parser.add_argument("--notebooks", default=str(REPO / "notebooks"), help="folder to copy")
    parser.add_argument("--artifacts", default=str(REPO / "artifacts"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=1500.0, help="whole check, seconds")
    parser.add_argument("--cells-timeout", type=float, default=1200.0, help="running all cells")
    args = parser.parse_args(argv)

    deadline = Deadline(args.timeout)
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "browser_check.png"
    if not Path(args.chromium).exists():
        print(f"browser check FAILED: no Chromium at {args.chromium} (apt-get install -y chromium)")
        return 1
    if not (Path(args.notebooks) / args.notebook).exists():
        print(f"browser check FAILED: no notebook {Path(args.notebooks) / args.notebook}")
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="cove-browser-check-"))
    workdir = tmp / "notebooks"
    shutil.copytree(args.notebooks, workdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    log_path = artifacts / "browser_check_jupyter.log"
    proc = None
    try:
        with open(log_path, "w") as log:
            proc = start_lab(workdir, port, token, log)
            wait_for_lab(base, token, proc, deadline)
            url = f"{base}/lab/tree/{args.notebook}?token={token}"
            message = drive_browser(url, args.notebook, tmp / "chromium-profile", shot,
                                    args.chromium, deadline, args.cells_timeout)  # fmt: skip
    except CheckFailed as exc:
        print(f"browser check FAILED: {exc} (screenshot: {shot}, server log: {log_path})")
        return 1
    finally:
        if proc is not None:
            stop_lab(base, token, proc)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"browser check passed: {message}; screenshot: {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
