"""bgrscrpt_ioc: background-script IOC for EPICS/IBEX instruments."""

__version__ = "0.1.0"
