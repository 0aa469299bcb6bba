"""Real targets for the watch tests: EPICS base IOCs running db_templates/sim_device.db,
under Debian's procServ or on their own. They live in :mod:`devsupport.epics_base`
(the bench uses them too); these are the names the tests import."""

from devsupport.epics_base import SimDevice, base_ioc_env, sim_command
from devsupport.ports import free_loopback_port as free_tcp_port

__all__ = ["SimDevice", "base_ioc_env", "free_tcp_port", "sim_command"]
