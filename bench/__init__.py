"""``make bench``: measure bgrscrpt_ioc against peers run in the same session.

Four figures, each a ratio against a peer measured in the same run:

1. ``start_latency``  caput START -> the script's first statement, vs bare ``python3 script.py``
2. ``ca_roundtrip``   pyepics caget / caput(wait=True) p50/p99, vs an EPICS base IOC
3. ``load``           caput START p99 and HEARTBEAT under output flood + 50 CA clients,
                      vs the same round trip with no load
4. ``footprint``      RSS and CPU% of the idle IOC, vs an EPICS base IOC

``python -m bench`` runs all four and writes BENCHMARKS.md (``bench.report``).
Everything stays on 127.0.0.1; every process started is stopped before the end.
"""
