"""IBEX's instrument technique scripts, as far as background scripts need them (bgrscrpt_ioc)."""
