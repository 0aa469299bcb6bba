"""``python -m bgrscrpt_ioc`` / ``bgrscrpt-ioc``: the command line (docs/settings.md).

Every problem with the command line, the settings file or the directories is
one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from bgrscrpt_ioc import __version__
from bgrscrpt_ioc.ca.limits import ServerSetupError, check_server_setup
from bgrscrpt_ioc.settings import SettingsError, load_settings, slot_name
from bgrscrpt_ioc.var_dir import VarDirUnusable, check_var_dir

PROG = "bgrscrpt-ioc"


class UsageError(Exception):
    """A one-line problem with how the IOC was started (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    default_var = Path(env["ICPVARDIR"]) / "bgrscrpt" if env.get("ICPVARDIR") else Path("var")
    p = _Parser(
        prog=PROG,
        description="Background-script IOC: supervises BGRSCRPT_NN scripts "
        "and serves their state over Channel Access.",
    )
    p.add_argument(
        "--prefix",
        default=env.get("MYPVPREFIX", ""),
        help="PV prefix (default: $MYPVPREFIX, else empty)",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="directory holding the scripts (default: $ICPINSTSCRIPTROOT, else .)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML settings (default: CONFIG_DIR/bgrscrpt.toml if it exists)",
    )
    p.add_argument("--slots", type=int, default=2, help="number of slots BGRSCRPT_01..NN")
    p.add_argument(
        "--var-dir",
        type=Path,
        default=default_var,
        help="logs and state database (default: $ICPVARDIR/bgrscrpt, else ./var)",
    )
    p.add_argument(
        "--interfaces",
        nargs="+",
        default=["127.0.0.1"],
        metavar="ADDR",
        help="CA server interfaces (default: 127.0.0.1)",
    )
    p.add_argument(
        "--procserv-control",
        action="store_true",
        help="also serve each slot as procServControl does, $(P)CS:PS:BGRSCRPT_NN: "
        "(for the IBEX GUI; off: a real procServControl may serve those names)",
    )
    p.add_argument("--list-pvs", action="store_true", help="print every PV name and exit")
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="IOC log level",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _check_interfaces(interfaces: list[str]) -> None:
    """Every address must be an IPv4 address (0.0.0.0: every interface)."""
    for addr in interfaces:
        try:
            ipaddress.IPv4Address(addr)
        except ValueError:
            raise UsageError(f"--interfaces: {addr!r} is not an IPv4 address") from None


def _ca_environment(interfaces: list[str]) -> int:
    """Port and beacon settings, before caproto reads the environment; the CA port.

    The one place the port is settled: caproto's server reads it from the
    environment, the IOC from the options."""
    env = os.environ
    # An EPICS base IOC takes EPICS_CAS_SERVER_PORT first; caproto ignores it.
    name = "EPICS_CAS_SERVER_PORT" if env.get("EPICS_CAS_SERVER_PORT") else "EPICS_CA_SERVER_PORT"
    port = env.get(name, "5064")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{name}={port!r} is not a port number")
    env["EPICS_CA_SERVER_PORT"] = port
    # Beacons to each served interface's broadcast address (127.255.255.255 for
    # loopback, as IBEX's runIOC has it) and EPICS_CAS_BEACON_ADDR_LIST.
    from bgrscrpt_ioc.ca.discovery import beacon_environment  # caproto: not for --help

    env.update(beacon_environment(interfaces, env))
    return int(port)


def _settings_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        if not args.config.is_file():
            raise UsageError(f"--config: no settings file at {args.config}")
        return args.config
    default = args.config_dir / "bgrscrpt.toml"
    return default if default.is_file() else None


def _list_pvs(args: argparse.Namespace) -> int:
    """Print every PV name, the watch PVs of the settings' ``[[watch]]`` entries included."""
    from bgrscrpt_ioc.ca.pvdb import pv_names

    watches: list[str] = []
    config_dir = args.config_dir or Path(os.environ.get("ICPINSTSCRIPTROOT") or ".")
    if args.config is not None or (config_dir / "bgrscrpt.toml").is_file():
        args.config_dir = config_dir.absolute()
        settings = load_settings(
            _settings_path(args), config_dir=args.config_dir, slot_count=args.slots
        )
        watches = [watch.name for watch in settings.watches]
    names = [slot_name(i) for i in range(1, args.slots + 1)]
    print("\n".join(pv_names(args.prefix, names, watches, args.procserv_control)))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if not 1 <= args.slots <= 99:
            raise UsageError("--slots must be between 1 and 99")
        check_server_setup()  # the caproto version and the CA server's limits
        if args.list_pvs:
            return _list_pvs(args)
        if args.config_dir is not None:
            config_dir, source = args.config_dir, "--config-dir"
        elif os.environ.get("ICPINSTSCRIPTROOT"):
            config_dir, source = Path(os.environ["ICPINSTSCRIPTROOT"]), "$ICPINSTSCRIPTROOT"
        else:
            config_dir, source = Path("."), "the current directory"
        config_dir = config_dir.absolute()
        if not config_dir.is_dir():
            raise UsageError(f"config dir ({source}): no directory at {config_dir}")
        args.config_dir = config_dir
        settings = load_settings(_settings_path(args), config_dir=config_dir, slot_count=args.slots)
        _check_interfaces(args.interfaces)
        ca_port = _ca_environment(args.interfaces)
        var_dir = args.var_dir.absolute()
        try:
            check_var_dir(var_dir)  # before logging starts: one line, exit 2
        except VarDirUnusable as exc:
            raise UsageError(f"--var-dir: {exc}") from None
    except (UsageError, SettingsError, ServerSetupError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("caproto").setLevel(logging.WARNING)

    # procServ 2.7 starts its child with SIGHUP, SIGPIPE and SIGTERM blocked, and the
    # mask is inherited: SIGTERM would reach neither the IOC (no clean shutdown) nor
    # its scripts (every STOP would end in SIGKILL). Start from an empty mask.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])

    from bgrscrpt_ioc.app import IocOptions, main_loop
    from bgrscrpt_ioc.ca.discovery import CannotServe
    from bgrscrpt_ioc.supervisor.containment import ContainmentError
    from bgrscrpt_ioc.var_dir import VarDirInUse

    options = IocOptions(
        prefix=args.prefix,
        config_dir=config_dir,
        var_dir=var_dir,
        settings=settings,
        interfaces=args.interfaces,
        ca_port=ca_port,
        procserv_control=args.procserv_control,
    )
    try:
        return main_loop(options)
    # Found once the IOC runs: one line too.
    except (VarDirInUse, VarDirUnusable, CannotServe, ContainmentError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
