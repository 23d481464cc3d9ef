"""A sweep's folder on disk and what it keeps.

``sweep_dir``: metadata and spec; ``study``: the Optuna study; ``trial_storage``: where Ray keeps
trials; ``sqlite_wal``: SQLite settings.
"""
