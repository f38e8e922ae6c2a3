"""Wheels for the service image, downloaded on the host and served to `docker build` on
loopback: the build itself has no index to reach (pip runs with PIP_NO_INDEX and
PIP_FIND_LINKS pointing here). pip download uses the machine's own pip configuration.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import shutil
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

from . import paths
from .paths import IMAGES_DIR
from .processes import run


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """An HTTP listing of `directory` on loopback: pip's --find-links reads it."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


# The image's interpreter: pip download evaluates environment markers against the running
# Python, not --python-version, so markers are re-evaluated for this one (e.g. redis needs
# async-timeout below 3.11.3).
IMAGE_PYTHON = "3.11.2"


def wheelhouse() -> Path:
    """Wheels of requirements.txt for the image's Python (Debian bookworm's, x86_64)."""
    requirements = paths.REPO_ROOT / "requirements.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    target = IMAGES_DIR / f"wheels-{digest}"
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    log("downloading the service's wheels for the image (pip download)")
    _pip_download(target, ["-r", str(requirements)])
    for _ in range(5):
        missing = _unmet_requirements(target)
        if not missing:
            break
        _pip_download(target, missing)
    (target / ".complete").write_text("")
    return target


def _pip_download(target: Path, what: list[str]) -> None:
    run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
         "--python-version", IMAGE_PYTHON, "--implementation", "cp", "--platform",
         "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform",
         "manylinux_2_28_x86_64", "--platform", "any", "-d", str(target), *what])


def _unmet_requirements(wheels: Path) -> list[str]:
    """Requirements of the downloaded wheels that hold for the image's Python but have no
    wheel here."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    environment = {**default_environment(), "python_full_version": IMAGE_PYTHON,
                   "python_version": IMAGE_PYTHON.rsplit(".", 1)[0]}
    have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")}
    missing = set()
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            for line in archive.read(metadata).decode().splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                requirement = Requirement(line.split(":", 1)[1].strip())
                if requirement.marker and not requirement.marker.evaluate(
                        {**environment, "extra": ""}):
                    continue
                if canonicalize_name(requirement.name) not in have:
                    requirement.marker = None
                    missing.add(str(requirement))
    return sorted(missing)
