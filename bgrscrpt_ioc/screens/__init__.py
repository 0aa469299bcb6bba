"""Operator screens (Phoebus ``.bob``, CS-Studio BOY ``.opi``) built from the IOC's PV list.

:mod:`.layout` lays the widgets out from :func:`bgrscrpt_ioc.ca.pvdb.pv_names` (the
list ``--list-pvs`` prints), so a screen can only name PVs the IOC serves;
:mod:`.bob`, :mod:`.opi` and :mod:`.html` write that one layout in each format.
"""
