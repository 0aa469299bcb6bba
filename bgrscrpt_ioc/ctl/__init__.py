"""``bgrscrpt``: the operator's command line, supervisorctl-like, over Channel Access."""
