"""What a sweep leaves for people.

``report``: the report folder and page; ``summary``: the end-of-sweep table; ``export``: best configs.
"""
