"""The driver of a sweep.

``cluster``: starts or joins Ray; ``runner``: builds the Tuner (the only place); ``searcher``:
Optuna behind Ray Tune; ``scheduler``: ASHA; ``callbacks`` and ``live_view``: watch trials; ``resume``.
"""
