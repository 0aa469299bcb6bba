"""A small ``genie_python`` for background scripts run by bgrscrpt_ioc.

It is found only where the real genie_python is not installed: bgrscrpt_ioc puts
this directory at the end of a script's ``sys.path``. ``genie`` offers the
subset background scripts use (see ``genie.__all__``).
"""
