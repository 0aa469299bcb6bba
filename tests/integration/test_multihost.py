"""Several hosts: the IOC, its operators and the IOCs it watches on different
machines, each a network namespace with its own address and host name, all on
one subnet behind one switch (tests/integration/netns_hosts.py).

What is checked is what an operator on another machine sees: the IOC found by
broadcast and by its address, its beacons heard on the subnet, ``bgrscrpt`` run
from another host, write access decided by the client's address and never by the
name it reports. Needs root and ``ip netns``; every name starts ``ci-``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bgrscrpt_ioc import __version__
from devsupport.settings_text import watch_entry
from tests.integration.conftest import FAST_SETTINGS, write_script
from tests.integration.harness import wait_for
from tests.integration.netns_hosts import (
    BEACON_PORT,
    BIN,
    CA_PORT,
    Agent,
    HostIoc,
    HostSim,
    client_env,
    skip_reason,
    subnet,
)

HOSTS = ["ioc", "ops", "lab", "far"]
T = 60.0  # generous: two cores shared with other test runs


@pytest.fixture(scope="module")
def lan():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with subnet(HOSTS) as built:
        yield built


@pytest.fixture
def hosts(lan, test_tag):
    """The module's hosts, left as found: nothing running on them, every cable in."""
    yield lan
    lan.reset()


@pytest.fixture
def make_host_ioc(tmp_path, prefix, config_dir, test_tag):
    """Build (not start) the IOC of a host; ``own=True``: a prefix, config dir and
    var dir of its own (``<prefix><HOST>:``), for more than one IOC in a test."""
    made: list[HostIoc] = []

    def make(host, settings: str | None = FAST_SETTINGS, own: bool = False, **kw) -> HostIoc:
        config = config_dir
        if own:
            config = tmp_path / f"config-{host.name}"
            config.mkdir()
            kw.setdefault("prefix", f"{prefix}{host.name.upper()}:")
        if settings is not None:
            (config / "bgrscrpt.toml").write_text(settings)
        kw.setdefault("prefix", prefix)
        kw.setdefault("config_dir", config)
        kw.setdefault("var_dir", tmp_path / f"var-{host.name}")
        ioc = HostIoc(host, **kw)
        made.append(ioc)
        return ioc

    yield make
    for ioc in made:
        if ioc.proc is not None and ioc.proc.poll() is None:
            ioc.stop()


def outage(seconds: float, holds, what: str, detail=lambda: "") -> None:
    """Let an outage last ``seconds``, checking all along that ``holds()``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert holds(), f"during the outage: expected {what} {detail()}"
        time.sleep(0.2)


def caget(host, pv: str, *servers: str, hostname: str | None = None, **env: str) -> str:
    """EPICS base's caget on ``host``: the value, or '' when it found nothing."""
    done = host.run(
        str(BIN / "caget"), "-w", "2", "-t", pv,
        env=client_env(*servers, **env), hostname=hostname,
    )  # fmt: skip
    return done.stdout.strip()


# ---- found on the network ----------------------------------------------------------

LISTEN = r"""
import json, socket, struct, sys, time
IP_PKTINFO = 8  # Linux: each datagram's destination address comes with it
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(float(sys.argv[2]))
print("listening", flush=True)
data, ancillary, _, sender = sock.recvmsg(1024, 256)
to = [socket.inet_ntoa(d[8:12]) for level, kind, d in ancillary if kind == IP_PKTINFO]
command, _, version, port, beacon_id, address = struct.unpack(">HHHHII", data[:16])
print(json.dumps({"command": command, "server_port": port, "to": to[0],
                  "address": socket.inet_ntoa(struct.pack(">I", address)), "sender": sender[0]}))
"""


def listen_for_a_beacon(host, timeout: float = 20) -> subprocess.Popen:
    listener = host.popen(
        [sys.executable, "-c", LISTEN, str(BEACON_PORT), str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
    return listener


def heard(listener: subprocess.Popen) -> dict:
    out, err = listener.communicate(timeout=30)
    lines = out.strip().splitlines()
    assert lines, f"no beacon heard: {err}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("beacons", ["derived", "listed"])
def test_found_by_broadcast_and_by_address_and_beacons_on_the_subnet(hosts, make_host_ioc, beacons):
    """``derived``: as a facility runs it, default beacon settings (not the tests'
    loopback ones): beacons reach every host on the subnet; ``listed``:
    EPICS_CAS_BEACON_ADDR_LIST names one host, and only it hears them."""
    server, ops, lab = hosts["ioc"], hosts["ops"], hosts["lab"]
    listed = {
        "EPICS_CAS_BEACON_ADDR_LIST": ops.address,
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }
    ioc = make_host_ioc(server, env=listed if beacons == "listed" else {})
    # Listening before the IOC starts: its first beacons go out within a second.
    # The IOC sends its first beacons within a second of starting, and more and
    # more slowly after: a host that hears none in 8 s is not sent any.
    listeners = [
        listen_for_a_beacon(ops),
        listen_for_a_beacon(lab, 20 if beacons == "derived" else 8),
    ]
    try:
        ioc.start(wait=False)
        name = ioc.pv("BGRSCRPT:VERSION")

        def found() -> bool:
            # caget exits 0 even when it finds nothing: the value is the answer.
            broadcast = {"EPICS_CA_AUTO_ADDR_LIST": "YES", "EPICS_CA_SERVER_PORT": str(CA_PORT)}
            return caget(ops, name, **broadcast) == __version__

        wait_for(found, 30, "caget on another host to find the IOC by broadcast")
        # By its address, as EPICS_CA_ADDR_LIST lists an IOC on another machine.
        assert caget(lab, name, server.address) == __version__
        beacon = heard(listeners[0])
        if beacons == "derived":
            assert heard(listeners[1])["address"] == server.address
        else:  # nothing for a host the list does not name
            out, _ = listeners[1].communicate(timeout=30)
            assert out.strip() == "", out
    finally:
        for listener in listeners:
            if listener.returncode is None:
                listener.kill()
                listener.communicate()
        ioc.stop()
    assert beacon["command"] == 13  # CA_PROTO_RSRV_IS_UP
    assert beacon["server_port"] == CA_PORT
    assert beacon["address"] == server.address and beacon["sender"] == server.address, beacon
    destination = hosts.broadcast if beacons == "derived" else ops.address
    assert beacon["to"] == destination, beacon
    log = ioc.output()
    assert "ERROR" not in log and "Traceback" not in log, log
    assert f"beacons to {destination}:{BEACON_PORT}\n" in log, log
    assert f"searches heard on {server.address}, {hosts.broadcast}" in log, log


# ---- operators on other hosts ---------------------------------------------------------

SLEEPER = """
import time
print("up", flush=True)
while True:
    time.sleep(0.2)
"""


def bgrscrpt(host, ioc, *args: str) -> subprocess.CompletedProcess:
    """The operator CLI run on ``host``, finding ``ioc`` by its address."""
    return host.run(
        sys.executable, "-m", "bgrscrpt_ioc.ctl", "--prefix", ioc.prefix, "--color", "never",
        *args, env=client_env(ioc.endpoint), timeout=60,
    )  # fmt: skip


def test_bgrscrpt_from_another_host(hosts, make_host_ioc, config_dir):
    write_script(config_dir, "background_script.py", SLEEPER)
    ioc = make_host_ioc(hosts["ioc"], slots=1).start()
    ops = hosts["ops"]
    ioc.wait_status("RUNNING")  # a slot with a script starts with the IOC

    stopped = bgrscrpt(ops, ioc, "stop", "01")
    assert stopped.returncode == 0, (stopped.stdout, stopped.stderr)
    ioc.wait_status("STOPPED")
    started = bgrscrpt(ops, ioc, "start", "01")
    assert started.returncode == 0, (started.stdout, started.stderr)
    ioc.wait_status("RUNNING")
    status = bgrscrpt(ops, ioc, "status")
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if "BGRSCRPT_01" in line)
    assert "RUNNING" in row, status.stdout
    for done in (started, status, stopped):
        assert "Traceback" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    assert ioc.stop() == 0


def test_bgrscrpt_start_through_a_link_cut_while_it_waits(hosts, make_host_ioc, config_dir):
    """The IOC's host drops off the network just after the START went out, and is
    back within the command's --timeout: the command waits for it and reports the
    run, rather than failing on the first read that gets no reply."""
    write_script(config_dir, "background_script.py", SLEEPER)
    settings = "[supervisor]\nstartsecs = 3.0\n"
    ioc = make_host_ioc(hosts["ioc"], settings, slots=1).start()
    ops, server = hosts["ops"], hosts["ioc"]
    ioc.wait_status("RUNNING")
    ioc.put("BGRSCRPT_01:STOP", 1)
    ioc.wait_status("STOPPED")
    command = [sys.executable, "-m", "bgrscrpt_ioc.ctl", "--prefix", ioc.prefix,
               "--timeout", "40", "start", "01"]  # fmt: skip
    start = ops.popen(command, env=client_env(ioc.endpoint), text=True,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        ioc.wait_status("STARTING")  # the START is in; RUNNING comes 3 s later
        server.cut()
        # Longer than the CLI's reads wait for a reply (2 s), several times over.
        outage(8.0, lambda: start.poll() is None, "the command to go on waiting")
        server.restore()
        out, err = start.communicate(timeout=60)
    finally:
        server.restore()
        if start.poll() is None:
            start.kill()
            start.communicate()
    assert start.returncode == 0, (out, err)
    assert out.startswith("BGRSCRPT_01: started, pid "), out
    assert err == "", err
    ioc.wait_status("RUNNING")
    assert ioc.stop() == 0


# ---- write access -----------------------------------------------------------------------


def caput(host, ioc, suffix: str, value: str, hostname: str | None = None):
    return host.run(
        str(BIN / "caput"), "-w", "5", "-t", ioc.pv(suffix), value,
        env=client_env(ioc.endpoint), hostname=hostname,
    )  # fmt: skip


def rights(host, ioc, suffix: str, hostname: str | None = None) -> str:
    """The access rights EPICS base's cainfo shows on ``host``."""
    done = host.run(
        str(BIN / "cainfo"), "-w", "5", ioc.pv(suffix),
        env=client_env(ioc.endpoint), hostname=hostname,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if "Access:" in x), done.stdout)
    return line.split("Access:", 1)[-1].strip()


def test_write_access_by_address_from_other_hosts(hosts, make_host_ioc):
    """``ops`` is allowed by its address, ``far`` by its name; ``lab`` by neither."""
    ops, lab, far = hosts["ops"], hosts["lab"], hosts["far"]
    settings = FAST_SETTINGS + f'\n[access]\nwrite_hosts = ["{ops.address}", "{far.name}"]\n'
    ioc = make_host_ioc(hosts["ioc"], settings, slots=1).start()
    pv = "BGRSCRPT_01:WATCHDOG"

    assert rights(ops, ioc, pv) == "read, write"
    done = caput(ops, ioc, pv, "7")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: ioc.get(pv) == 7, 10, "the put from the allowed host")

    # Another host: read only, even when it gives itself the allowed host's name.
    for name in (lab.name, ops.name):
        assert rights(lab, ioc, pv, hostname=name) == "read, no write", name
        refused = caput(lab, ioc, pv, "9", hostname=name)
        assert "Write access denied" in refused.stderr + refused.stdout, refused
    assert ioc.get(pv) == 7
    assert caget(lab, ioc.pv(pv), ioc.endpoint) == "7"
    # A name entry is only what the client says (the README says so): the name
    # a host gives itself does reach the IOC, and the IOC does not check it.
    assert rights(lab, ioc, pv, hostname=far.name) == "read, write"
    assert rights(far, ioc, pv) == "read, write"
    log = ioc.output()
    assert "Traceback" not in log, log
    assert ioc.stop() == 0


# ---- a watch on one host, the IOC it restarts on another --------------------------------

CONN_TMO = 5.0  # the watching IOC's EPICS_CA_CONN_TMO in the partition test


@pytest.fixture
def across(hosts, make_host_ioc, tmp_path, prefix):
    """Host ``ioc`` (B): the target (an EPICS base IOC under Debian's procServ, CA
    on port 5070) and a bgrscrpt_ioc whose watch T1 restarts it through the local
    procServ (its own trigger an hour away: only asked). Host ``ops`` (A): a
    bgrscrpt_ioc whose watch W watches the target and asks T1 to restart it.
    Returns a function that starts them, A's environment given."""
    b_host, a_host = hosts["ioc"], hosts["ops"]
    made = []

    def start(disconnected: bool = True, **a_env: str):
        sim = HostSim(b_host, tmp_path, prefix=f"{prefix}D:")
        made.append(sim)
        sim.start()
        b_settings = watch_entry(
            "T1", sim.pv(), sim.name, delay=3600.0, procserv=f'{{ {sim.name} = "{sim.control}" }}'
        )
        b = make_host_ioc(b_host, b_settings, own=True, slots=1,
                          env=ca_list(sim.endpoint)).start()  # fmt: skip
        peer = f'{{ {sim.name} = "{b.prefix}BGRSCRPT:WATCH:T1:" }}'
        a_settings = watch_entry("W", sim.pv(), sim.name, delay=0.2, via="peer", peer=peer,
                                 verify_timeout=30.0, backoff=1.0,
                                 disconnected=disconnected)  # fmt: skip
        a = make_host_ioc(a_host, a_settings, own=True, slots=1,
                          env={**ca_list(sim.endpoint, b.endpoint), **a_env}).start()  # fmt: skip
        return sim, a, b

    yield start
    for sim in made:
        sim.stop()


def ca_list(*servers: str) -> dict[str, str]:
    return {"EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": " ".join(servers)}


def watch_pv(ioc, name: str, field: str, **kw):
    if field == "MSG":
        kw.setdefault("count", 1024)
    return ioc.get(f"BGRSCRPT:WATCH:{name}:{field}", as_string=field != "RESTART_CNT", **kw)


def wait_watch(ioc, name: str, field: str, wanted, timeout: float = T) -> None:
    wait_for(
        lambda: watch_pv(ioc, name, field) == wanted,
        timeout,
        f"{ioc.prefix} watch {name} {field} {wanted} (MSG {watch_pv(ioc, name, 'MSG')!r})",
    )


def test_a_watch_restarts_an_ioc_on_another_host_through_that_hosts_ioc(across):
    sim, a, b = across()
    wait_watch(a, "W", "STATE", "OK")
    wait_watch(b, "T1", "STATE", "OK")
    pid = sim.child_pid()

    sim.fault()
    wait_watch(a, "W", "RESTART_CNT", 1)
    wait_watch(a, "W", "STATE", "OK")
    text = watch_pv(a, "W", "MSG")
    assert text.startswith(f"restarted {sim.name} on {b.prefix}, recovered in"), text
    assert watch_pv(b, "T1", "RESTART_CNT") == 1
    assert f"restarted {sim.name}" in watch_pv(b, "T1", "MSG")
    assert sim.child_pid() != pid  # procServ on B started the IOC again
    assert sim.severity() == 0
    for ioc in (a, b):
        assert "Traceback" not in ioc.output(), ioc.output()


def test_a_partition_of_45_s_during_which_the_target_faults(hosts, across):
    """A's link to B is cut for 45 s (nine times A's EPICS_CA_CONN_TMO); the target
    on B faults meanwhile. A shows the outage; nothing is restarted while nobody
    can be asked (``disconnected = false``: the outage is no reason to restart,
    the fault is); once the link is back A sees the fault and has B restart the
    target within seconds."""
    sim, a, b = across(disconnected=False, EPICS_CA_CONN_TMO=str(CONN_TMO))
    wait_watch(a, "W", "STATE", "OK")
    wait_watch(a, "W", "ALARM", "NO_ALARM")
    observer = Agent(hosts["ops"], a.endpoint)  # on A's side of the cut: sees it all
    try:
        observer.monitor(a.pv("BGRSCRPT:WATCH:W:ALARM"))
        pid = sim.child_pid()

        hosts["ioc"].cut()
        cut_at = time.monotonic()
        wait_watch(a, "W", "ALARM", "DISCONNECTED", timeout=CONN_TMO + 20)
        sim.fault()  # seen on B only
        assert sim.severity() == 3  # INVALID
        outage(45.0 - (time.monotonic() - cut_at), lambda: watch_pv(a, "W", "RESTART_CNT") == 0,
               "no restart from A while B cannot be asked",
               lambda: watch_pv(a, "W", "MSG"))  # fmt: skip
        assert sim.child_pid() == pid and sim.severity() == 3
        hosts["ioc"].restore()
        back_at = time.monotonic()

        wait_watch(a, "W", "RESTART_CNT", 1, timeout=30)
        acted = time.monotonic() - back_at
        wait_watch(a, "W", "STATE", "OK")
        wait_watch(a, "W", "ALARM", "NO_ALARM")
        alarms = [value for _, value, _ in observer.history(a.pv("BGRSCRPT:WATCH:W:ALARM"))]
    finally:
        hosts["ioc"].restore()
        observer.close()
    assert "DISCONNECTED" in alarms, alarms
    assert sim.child_pid() != pid
    assert watch_pv(b, "T1", "RESTART_CNT") == 1
    text = watch_pv(a, "W", "MSG")
    assert text.startswith(f"restarted {sim.name} on {b.prefix}, recovered in"), text
    print(f"A acted {acted:.1f} s after the link returned")
    for ioc in (a, b):
        assert "Traceback" not in ioc.output(), ioc.output()


def test_a_partition_does_not_lock_out_a_watch_that_could_not_reach_its_peer(hosts, across):
    """``disconnected = true``, as watches are by default: the outage itself is a
    reason to restart, so the watch tries through a peer it cannot reach, again
    and again. Attempts that reached nothing must not lock it out (three did, and
    the target's fault stayed until a person came): once the link is back, its
    next attempt restarts the target."""
    sim, a, b = across(disconnected=True, EPICS_CA_CONN_TMO=str(CONN_TMO))
    wait_watch(a, "W", "STATE", "OK")
    observer = Agent(hosts["ops"], a.endpoint)
    msgs: set[str] = set()

    def tried_again() -> bool:
        msgs.add(watch_pv(a, "W", "MSG"))
        return watch_pv(a, "W", "RESTART_CNT") >= 4

    try:
        observer.monitor(a.pv("BGRSCRPT:WATCH:W:STATE"))  # every state it went through
        pid = sim.child_pid()
        hosts["ioc"].cut()
        sim.fault()
        # more attempts than max_restarts (3), each failing after 5 s
        wait_for(tried_again, 60, f"a fourth attempt (MSG {watch_pv(a, 'W', 'MSG')!r})")
        assert sim.child_pid() == pid
        hosts["ioc"].restore()
        wait_for(lambda: watch_pv(b, "T1", "RESTART_CNT") == 1, 30, "B asked to restart")
        wait_watch(a, "W", "STATE", "OK")
        states = [value for _, value, _ in observer.history(a.pv("BGRSCRPT:WATCH:W:STATE"))]
    finally:
        hosts["ioc"].restore()
        observer.close()
    assert "FAILED" in states and "LOCKOUT" not in states, states
    assert any("does not connect" in text for text in msgs), msgs
    assert sim.child_pid() != pid and sim.severity() == 0
    text = watch_pv(a, "W", "MSG")
    assert text.startswith(f"restarted {sim.name} on {b.prefix}, recovered in"), text
