"""MLflow records of a sweep.

``mlflow_client``: the client and its retries; ``sweep_tracker``: the driver's parent and trial
runs; ``trial_logger``: a trial's own logging; ``provenance`` and ``curves``: what a trial records besides metrics.
"""
