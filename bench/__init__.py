"""`make bench`: the suite as real processes under load, beside the floor of the same run."""
