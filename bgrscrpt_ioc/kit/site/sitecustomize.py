"""Put bgrscrpt_ioc's compatibility modules at the END of a script's ``sys.path``;
end a script whose IOC died while starting it.

The IOC puts this directory on ``PYTHONPATH`` for its scripts. Appending (rather
than listing the compat directory on ``PYTHONPATH`` itself) means that a real
``genie_python`` or ``technique`` installation, anywhere on the normal path,
is always found first; ``BGRSCRPT_GENIE_PYTHON=kit`` makes ``genie_python``
(only) the IOC's own even so. When a script imports ``matplotlib.pyplot``,
``pyplot.plot_date`` (gone in matplotlib 3.11) is put back, as IBEX scripts call
it; InstrumentScripts' plot module gets a data file under ``$ICPVARDIR``
instead of ``C:\\Instrument``. Any other ``sitecustomize`` this one shadows still
runs.
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

# Python's own path finder (importlib.machinery is not loaded yet: take it from the
# import system itself).
_path_finder = next((f for f in sys.meta_path if getattr(f, "__name__", "") == "PathFinder"), None)


class _ScriptImports:
    """Finds ``genie_python`` in the compat directory when asked to (kit mode); after
    ``matplotlib.pyplot`` or InstrumentScripts' plot module loads, puts right what
    they assume (``bgrscrpt_ioc.plot.ibex_compat``)."""

    kit_genie = os.environ.get("BGRSCRPT_GENIE_PYTHON", "") == "kit"
    fixes = {
        "matplotlib.pyplot": "restore_plot_date",
        "technique.muon.background_plot": "local_save_file",
    }

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "genie_python" and cls.kit_genie:
            return _path_finder.find_spec(name, [_compat])
        fix = cls.fixes.get(name)
        if fix is None:
            return None
        spec = _path_finder.find_spec(name, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        load = loader.exec_module

        def exec_module(module):
            load(module)
            try:
                from bgrscrpt_ioc.plot import ibex_compat

                getattr(ibex_compat, fix)(module)
            except Exception:  # a convenience: never the reason a module fails to import
                pass

        loader.exec_module = exec_module
        return spec


if _path_finder is not None:
    sys.meta_path.insert(0, _ScriptImports)

# Chain to the sitecustomize this one hides (e.g. a distribution's), if any.
_this = sys.modules.pop(__name__)
# (try/except, not contextlib.suppress: contextlib is not loaded yet at this point.)
try:  # noqa: SIM105
    __import__("sitecustomize")
except ImportError:  # none to chain to
    pass
# site.py looks the module up again after importing it: leave one there.
sys.modules.setdefault(__name__, _this)
