"""The few private parts of Ray, Optuna and MLflow the engine uses, each behind one small module.

Nothing else in the project reaches into a library's internals: when a library changes, these
modules are where to look, and each falls back to the public API where it can.
"""
