"""The sweep spec, read and checked all at once before anything starts.

``sweep_spec``: the YAML a user writes, as a ``SweepSpec``; ``params``: its search space.
"""
