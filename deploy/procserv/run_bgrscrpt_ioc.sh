#!/usr/bin/env bash
# Run bgrscrpt_ioc under procServ, the way IBEX runs its IOCs: a named child, a
# dated log file, a telnet control port on localhost (^X restarts the IOC, ^T
# toggles auto restart, ^] leaves the console), and timestamps in the log.
#
#   deploy/procserv/run_bgrscrpt_ioc.sh [--foreground] [bgrscrpt-ioc options...]
#   e.g. MYPVPREFIX=IN:EMU: run_bgrscrpt_ioc.sh --config-dir /instrument/scripts
#
# Settings, from the environment:
#   BGRSCRPT_PROCSERV_NAME         procServ's name for the child      (BGRSCRPT)
#   BGRSCRPT_PROCSERV_PORT         control port, on 127.0.0.1 only     (20998)
#   BGRSCRPT_PROCSERV_AUTORESTART  yes: procServ restarts the IOC when it exits;
#                                  no: --noautorestart, the IOC stays down until
#                                  someone types ^X on the console      (yes)
#   BGRSCRPT_PROCSERV_HOLDOFF      seconds between restarts             (15)
#   BGRSCRPT_LOG_DIR               procServ's logs  ($ICPVARDIR/logs/ioc, else ./var/logs/ioc)
#   BGRSCRPT_PYTHON                the interpreter the IOC runs in (the project's
#                                  .venv when there is one, else python3 on PATH)
#
# procServ kills its child with SIGTERM here (its own default is SIGKILL): the IOC
# then stops every script's process group and closes its state database before
# it goes. procServ 2.7 starts its child with SIGHUP, SIGPIPE and SIGTERM blocked
# (an EPICS IOC under it seems to shrug SIGTERM off), so the child first clears
# its signal mask and dispositions, then becomes the IOC. Without --foreground procServ puts itself in the background, as on an
# IBEX server; with it (systemd, tests) it stays in the foreground.
set -euo pipefail

die() { echo "run_bgrscrpt_ioc.sh: error: $*" >&2; exit 2; }

here="$(cd "${BASH_SOURCE[0]%/*}" && pwd)"
root="$(cd "$here/../.." && pwd)"

foreground=()
if [ "${1:-}" = "--foreground" ]; then
  foreground=(--foreground)
  shift
fi

name="${BGRSCRPT_PROCSERV_NAME:-BGRSCRPT}"
port="${BGRSCRPT_PROCSERV_PORT:-20998}"
holdoff="${BGRSCRPT_PROCSERV_HOLDOFF:-15}"
case "${BGRSCRPT_PROCSERV_AUTORESTART:-yes}" in
  yes) autorestart=() ;;
  no) autorestart=(--noautorestart) ;;
  *) die "BGRSCRPT_PROCSERV_AUTORESTART must be yes or no, not '${BGRSCRPT_PROCSERV_AUTORESTART}'" ;;
esac
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] && [ "$port" -lt 65536 ] \
  || die "BGRSCRPT_PROCSERV_PORT must be a port number, not '$port'"
[[ "$holdoff" =~ ^[0-9]+$ ]] || die "BGRSCRPT_PROCSERV_HOLDOFF must be whole seconds, not '$holdoff'"

procserv="$(command -v procServ || true)"
[ -n "$procserv" ] || die "procServ is not installed (Debian: apt-get install procserv)"

python="${BGRSCRPT_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"
  else python="$(command -v python3 || true)"; fi
fi
[ -n "$python" ] && [ -x "$python" ] || die "no Python interpreter at '${python}' (set BGRSCRPT_PYTHON)"
# procServ 2.7 runs its child only from an absolute path.
case "$python" in /*) ;; *) python="$PWD/$python" ;; esac

if [ -n "${BGRSCRPT_LOG_DIR:-}" ]; then log_dir="$BGRSCRPT_LOG_DIR"
elif [ -n "${ICPVARDIR:-}" ]; then log_dir="$ICPVARDIR/logs/ioc"
else log_dir="$PWD/var/logs/ioc"; fi
mkdir -p "$log_dir" || die "cannot create the log dir $log_dir"
logfile="$log_dir/$name-$(date +%Y%m%d).log"

unblock_and_exec='
import os, signal, sys
signal.pthread_sigmask(signal.SIG_SETMASK, [])
for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
    signal.signal(signum, signal.SIG_DFL)
os.execv(sys.executable, [sys.executable, "-m", "bgrscrpt_ioc", *sys.argv[1:]])
'

exec "$procserv" "${foreground[@]}" \
  --logstamp --timefmt "%Y-%m-%d %H:%M:%S" --logfile "$logfile" \
  --name "$name" --restrict --ignore "^D^C" \
  --killsig 15 --holdoff "$holdoff" "${autorestart[@]}" \
  --chdir "$PWD" \
  "127.0.0.1:$port" \
  "$python" -c "$unblock_and_exec" "$@"
