"""genie_python for the background scripts bgrscrpt_ioc runs, where IBEX's is not installed.

bgrscrpt_ioc puts this directory at the end of a script's ``sys.path``, so a
real genie_python wins (unless the IOC runs with
``BGRSCRPT_GENIE_PYTHON=kit``). ``genie`` offers the commands background
scripts use and answers as genie_python does; ``genie_cachannel_wrapper``,
``genie_dae.DAE_PVS_LOOKUP`` and ``matplotlib_backend.ibex_websocket_backend``
are there for InstrumentScripts' modules.
"""
