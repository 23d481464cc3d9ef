"""Bad input outside the spec: an error the command reports as one line, with exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Something the user gave (a name, a URI, an address, a folder) cannot work.

    Its message is one line that says what is wrong and what to do. The ``sweeps`` command prints
    it as ``error: ...`` and exits 2; nothing has been created when it is raised.
    """
