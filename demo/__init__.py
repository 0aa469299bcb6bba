"""``python -m demo`` (``make demo``): a whole simulated instrument on one machine."""
