"""What runs inside a trial; never imports the engine.

``epoch_loop``: the one epoch loop; the ways to drive it: Ray Tune (``one_worker``), Ray Train
ranks (``multi_worker``), and ``sweeps train`` (``from_file``).
"""
