"""Adapters that own the scripts' processes: spawning, process groups, output, notify."""
