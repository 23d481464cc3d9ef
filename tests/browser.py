"""Debian's Chromium through Playwright, for the browser tests.

Importing this module skips the importing test module where Playwright or Chromium is missing
(`.ci/run` installs Chromium; Playwright comes with the dev dependencies).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on this machine", allow_module_level=True)

ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def launch(p: Any) -> Any:
    """A headless Chromium from a ``playwright.sync_playwright()`` context."""
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
