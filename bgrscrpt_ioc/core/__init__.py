"""The pure core: policies and state machines, no I/O and no event loop."""
