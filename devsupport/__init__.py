"""What the tests, the bench and the demo need to run the IOC and its neighbours on
one machine: not part of the product (the installed package is ``bgrscrpt_ioc``
alone), importable from the repository's root as ``tests``, ``bench`` and ``demo``
are.

- :mod:`devsupport.ioc`: the real IOC as a subprocess, driven through pyepics.
- :mod:`devsupport.epics_base`: EPICS base IOCs: the simulated device a watch
  restarts (under procServ or alone) and the same records as the IOC's.
- :mod:`devsupport.ports`: free loopback ports, and the pool handed out to servers.
- :mod:`devsupport.ca_env`: Channel Access pointed at exactly those ports.
- :mod:`devsupport.processes`: is a process gone, waiting until it is, and what a
  run left running.
- :mod:`devsupport.waiting`: polling a condition with a deadline.
- :mod:`devsupport.dbparse`: reading ``db_templates/``, so the tests hold the PVs to them.
"""
