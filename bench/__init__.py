"""`make bench`: the function against its baselines, measured in one interleaved run."""
