"""Put bgrscrpt_ioc's compatibility modules at the END of a script's ``sys.path``;
end a script whose IOC died while starting it.

The IOC puts this directory on ``PYTHONPATH`` for its scripts. Appending (rather
than listing the compat directory on ``PYTHONPATH`` itself) means that a real
``genie_python`` or ``technique`` installation, anywhere on the normal path,
is always found first. Any other ``sitecustomize`` this one shadows still runs.
"""

# Only modules Python has loaded already by now: this runs before every script
# starts, so it must cost next to nothing (start latency).
import os
import sys

# The IOC's keeper starts a script through ``setpriv --pdeathsig KILL``. Had the
# keeper died before setpriv set that, nothing would ever stop this script: then
# its parent is no longer the keeper, and it ends here. Taken out of the
# environment, so that a Python process the script starts does not check it
# against the wrong parent.
_ioc_pid = os.environ.pop("BGRSCRPT_IOC_PID", "")
if _ioc_pid.isdigit() and os.getppid() != int(_ioc_pid):
    os._exit(1)

# With cgroups, the keeper moves the script into its slot's cgroup while Python
# starts, and says so on this pipe: the script's code (and so anything it starts)
# runs only inside the cgroup. "1": moved; "0<why>": not, and the run ends here.
_gate = os.environ.pop("BGRSCRPT_GATE_FD", "")
if _gate.isdigit():
    try:
        _answer = os.read(int(_gate), 1024)
    except OSError:
        _answer = b""
    try:  # noqa: SIM105 - contextlib is not loaded yet
        os.close(int(_gate))
    except OSError:
        pass
    if _answer[:1] != b"1":
        _why = _answer[1:] or b"the IOC's keeper is gone"
        os.write(2, b"bgrscrpt: cannot move the script into its cgroup: " + _why + b"\n")
        os._exit(1)

_here = os.path.dirname(os.path.abspath(__file__))
_compat = os.path.join(os.path.dirname(_here), "compat")

# This directory was only a way in: scripts should not see it on their path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
if _compat not in sys.path:
    sys.path.append(_compat)

# Chain to the sitecustomize this one hides (e.g. a distribution's), if any.
_this = sys.modules.pop(__name__)
# (try/except, not contextlib.suppress: contextlib is not loaded yet at this point.)
try:  # noqa: SIM105
    __import__("sitecustomize")
except ImportError:  # none to chain to
    pass
# site.py looks the module up again after importing it: leave one there.
sys.modules.setdefault(__name__, _this)
