"""How the user calls the ``sweeps`` command, for the commands that hints and refusals print."""

from __future__ import annotations

import os
import shlex
import shutil
import sys


def command_name() -> str:
    """How to call this command again: ``sweeps`` where that is on PATH, else the path it was run by.

    After ``scripts/demo.sh`` the command is ``.venv/bin/sweeps``: a ``next:`` line that said
    ``sweeps export ...`` gave "command not found" when pasted.
    """
    invoked = sys.argv[0] if sys.argv else ""
    if os.path.basename(invoked) != "sweeps":  # python -m sweeps, or a test calling main()
        return "sweeps" if shutil.which("sweeps") else f"{shlex.quote(sys.executable)} -m sweeps"  # by path
    found = shutil.which("sweeps")
    return "sweeps" if found and os.path.realpath(found) == os.path.realpath(invoked) else shlex.quote(invoked)
