"""The driver of a sweep.

``cluster``: starts or joins Ray; ``preflight``: a new sweep's inputs, checked before anything
starts; ``runner``: builds the Tuner (the only place); ``searcher``: Optuna behind Ray Tune;
``scheduler``: ASHA; ``callbacks`` and ``live_view``: watch trials; ``resume``.
"""
