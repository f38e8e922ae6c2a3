"""Headless Chromium from Debian's packages, driven by Selenium, that reaches nothing off this
machine.

- Selenium Manager never runs: the driver's path and the browser's are given explicitly
  (Selenium's DriverFinder calls selenium-manager only when `Service.path` is empty), it is
  replaced by a function that raises, and SE_OFFLINE / SE_AVOID_STATS are set besides.
- The real browser binary is started, not Debian's /usr/bin/chromium launcher script: the
  launcher sources /etc/chromium.d/, which adds API keys and --enable-remote-extensions (which in
  turn drops its --disable-background-networking).
- Chromium's background traffic is switched off by flags, every host name resolves to nothing but
  localhost and 127.0.0.1, and whatever would still go out is sent to a proxy at 127.0.0.1:9,
  where nothing listens. (Chromium 156 still tries, at start, accounts.google.com/ListAccounts,
  update.googleapis.com/service/update2 and its default search engine: a net log shows them
  refused there, and no flag or pref tried stopped them.)

- And it is held to that: chromedriver, and so the browser it starts, runs in a cgroup of its
  own whose packets to anything but loopback are rejected and counted (devcluster's egress
  guard, `network.browser_guard()`); the `browser` fixture (guarded_browser) fails a test
  after which the count is not 0. (Where the guard cannot be set up — no root, no cgroup
  v2 — the fixture fails under REQUIRE_FULL_STACK=1, as CI runs, and otherwise says it runs
  unguarded.)

How to check that with strace, and what it shows: `python -m tests.browser --help`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster.processes import WaitTimedOut, wait_until

INSTALL = "apt-get install -y chromium chromium-driver"
REAL_BINARY = Path("/usr/lib/chromium/chromium")  # where Debian's package puts the browser

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater,"
    "NetworkTimeServiceQuerying",
    "--metrics-recording-only",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--safebrowsing-disable-auto-update",
    "--disable-breakpad",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1;localhost",
    "--window-size=1200,900",
)


def binaries() -> tuple[str, str]:
    """(browser, chromedriver); a missing one fails the test loudly with the line to run."""
    launcher = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", launcher), ("chromedriver", driver))
               if path is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: the browser tests need "
                    f"Debian's packages (`{INSTALL}`)", pytrace=False)
    browser = str(REAL_BINARY) if os.access(REAL_BINARY, os.X_OK) else launcher
    return browser, driver


def _never(*args, **kwargs):
    raise AssertionError("Selenium Manager must not run: it downloads drivers and reports usage")


def start_chromium(user_data_dir: Path, driver_log: Path | None = None,
                   cgroup_procs: Path | None = None):
    """A Selenium Chrome driver for a fresh headless Chromium using `user_data_dir`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    # Selenium Manager (which downloads drivers and reports usage) reads these; it must not
    # run at all, and would then stay offline and silent.
    os.environ["SE_OFFLINE"] = "true"
    os.environ["SE_AVOID_STATS"] = "true"
    os.environ.pop("SE_CHROMEDRIVER", None)  # it would override executable_path
    for name in ("no_proxy", "NO_PROXY"):  # Selenium talks to chromedriver directly, never
        kept = os.environ.get(name, "")  # through a proxy the environment names
        if "127.0.0.1" not in kept.split(","):
            os.environ[name] = ",".join(filter(None, ("localhost,127.0.0.1", kept)))
    SeleniumManager.binary_paths = _never  # should Selenium ever change its mind
    browser, driver = binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    trace = os.environ.get("CHROMIUM_STRACE")
    if trace:  # chromedriver and the browser under strace: see main()
        driver = _traced(driver, Path(trace), user_data_dir.parent)
    if cgroup_procs is not None:  # joins the guarded cgroup before it starts anything
        driver = _in_cgroup(driver, cgroup_procs, user_data_dir.parent)
    service = Service(executable_path=driver, log_output=str(driver_log) if driver_log
                      else os.devnull)
    return webdriver.Chrome(service=service, options=options)


def _traced(driver: str, out: Path, workdir: Path) -> str:
    """A wrapper running chromedriver (and so the browser it starts) under strace, writing every
    connect() and send to `out`.<pid>."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("CHROMIUM_STRACE is set but strace is missing: apt-get install -y strace",
                    pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    wrapper = workdir / "chromedriver-traced"
    wrapper.write_text(f'#!/bin/sh\nexec {strace} -f -yy -e trace=connect,sendto,sendmsg,'
                       f'sendmmsg,write -o "{out}.$$" {driver} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _in_cgroup(driver: str, cgroup_procs: Path, workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    wrapper = workdir / "chromedriver-guarded"
    wrapper.write_text(f'#!/bin/sh\necho $$ > "{cgroup_procs}"\nexec {driver} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _guard():
    """The browser's egress guard, installed; None where it cannot be (see the docstring)."""
    from devcluster import network

    guard = network.browser_guard()
    reason = network.EgressGuard.available()
    if reason is None and os.geteuid() != 0:
        reason = "not root (iptables)"
    if reason is not None:
        if os.environ.get("REQUIRE_FULL_STACK") == "1":
            pytest.fail(f"the browser's egress guard cannot be set up: {reason}", pytrace=False)
        print(f"browser runs without its egress guard: {reason}")
        return None
    guard.install()
    return guard


@contextlib.contextmanager
def guarded_browser(tmp_path: Path) -> Iterator:
    """A headless Chromium (Selenium WebDriver) with a throwaway profile under tmp_path, in
    the egress guard's cgroup; the guard must have stopped nothing by the end.

    The page's console log is printed at the end (pytest shows it when the test failed);
    chromedriver's log is tmp_path/chromedriver.log."""
    guard = _guard()
    try:
        driver = start_chromium(tmp_path / "chromium-profile", tmp_path / "chromedriver.log",
                                guard.cgroup_procs if guard else None)
        try:
            yield driver
        finally:
            try:
                for entry in console(driver):
                    print(f"console {entry['level']}: {entry['message']}")
            finally:
                driver.quit()
        if guard is not None:
            counts = guard.counts()
            assert (counts.output_rejected, counts.forward_dropped) == (0, 0), (
                f"the browser sent packets off this machine: {counts}")
    finally:
        if guard is not None:
            _wait_empty(guard)
            guard.remove()


def _wait_empty(guard, seconds: float = 10) -> None:
    """chromedriver and the browser gone from the cgroup (quit() does not wait for them)."""
    with contextlib.suppress(WaitTimedOut):  # best effort: remove() keeps a cgroup in use
        wait_until(lambda: not guard.member_pids(), timeout=seconds, interval=0.1,
                   what="the browser's processes to end")


def console(driver) -> list[dict]:
    """The browser console's entries since the last call (JS errors, CSP violations, ...)."""
    return driver.get_log("browser")


def screenshot(driver, path: Path) -> bytes:
    """Save the viewport as a PNG at `path` and return its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"the screenshot to {path} failed")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG"), f"{path} is not a PNG"
    return data


def main(argv: list[str]) -> int:
    """Open a URL in the harness's Chromium and save a screenshot. The traffic check:

        strace -f -yy -e trace=connect,sendto,sendmsg,sendmmsg,write -o /tmp/trace.txt \\
            .venv/bin/python -m tests.browser http://127.0.0.1:PORT/ /tmp/shot.png

    or CHROMIUM_STRACE=/tmp/trace.txt for the browser tests (one /tmp/trace.txt.<pid> per
    browser). Every connect() is to AF_UNIX or loopback but one kind: Chromium's and
    chromedriver's IPv6 reachability probe (net::HostResolverManager, on every host
    resolution, no switch turns it off) connect()s a UDP socket to 2001:4860:4860::8888 port
    443 and reads back the local address the kernel picked. A UDP connect() sends nothing, and
    the trace shows no send on those sockets.
    """
    if len(argv) != 2 or argv[0].startswith("-"):
        print(main.__doc__)
        return 2
    url, out = argv
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        driver = start_chromium(Path(tmp) / "profile", Path(tmp) / "chromedriver.log")
        try:
            driver.get(url)
            print(f"{driver.capabilities['browserVersion']}: {driver.title!r}")
            screenshot(driver, Path(out))
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
