"""bgrscrpt_ioc's stand-in for IBEX's ``server_common`` (only what background scripts use)."""
