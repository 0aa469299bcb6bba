"""Muon technique scripts: ``background_plot``."""
