"""Plain Ray Tune as a user runs it: without the engine's settings in the driver's environment.

``sweeps.runner.start_ray`` sets the engine's variables (``ENGINE_ENV``) in the driver's own
environment, and the benchmarks start Ray with it, so a plain Tune run in the same process would
inherit them: ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` switches off Tune's JSON, CSV and
TensorBoard loggers, which a user's plain Tune has on. Those variables are read when ``fit()``
starts, in the driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sweeps.engine.cluster import ENGINE_ENV


@contextmanager
def plain_tune_env() -> Iterator[None]:
    """Within the block, the driver's environment lacks the engine's variables; restored after."""
    saved = {key: os.environ.pop(key) for key in ENGINE_ENV if key in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
