"""Client churn: hundreds of CA clients subscribe and vanish while the IOC publishes.

caproto 1.3.0's server can fail ("deque mutated during iteration", "dictionary
changed size during iteration") when a subscriber comes or goes while it
publishes; the IOC bounds its publish rate. Here a client process, on loopback
only and for a bounded time and count, opens raw CA circuits that subscribe to
LOG, MSG and HEARTBEAT of a slot whose script prints without pause and drops
them with a TCP reset (some before the first update, some in the middle of the
stream), while caproto threading contexts are created and disconnected beside
them. Afterwards the IOC must still answer, publish and supervise, and its log
must hold no traceback. (Without the circuit of bgrscrpt_ioc/ca/circuit.py,
caproto logs "await wasn't used with future" tracebacks here: a reset client
makes its circuit's subscription task cancel and await itself.)

And SIGTERM while dozens of circuits have updates in flight must stop the IOC at
once: Python 3.11's ``asyncio.wait_for`` can swallow the cancellation of a
circuit's task, which then waits for ever, and so would ``asyncio.run``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import epics

from tests.integration.conftest import write_script
from tests.integration.harness import process_gone, wait_for

CHURN_SECONDS = 8.0
MIN_RAW_CLIENTS = 200
"""Raw clients the churn goes on for, past CHURN_SECONDS if the machine is slow (up to
a minute): the test asks for this many, and must not race a clock for them."""
MAX_RAW_CLIENTS = 800
MAX_CONTEXTS = 60
EXTRA_LOG_SUBSCRIPTIONS = 4
"""Each raw client subscribes to LOG this many more times: more bytes in flight at the
reset, which is what makes caproto 1.3's disconnect race (see ca/circuit.py) show."""

CHATTY_SCRIPT = """
import itertools, time
for i in itertools.count():
    print(f"line {i} " + "x" * 70, flush=True)
    if i % 20 == 0:
        time.sleep(0.01)
"""

CHURN_CLIENT = r'''
"""Churn CA clients against one IOC; print a JSON summary.

Args: port seconds min_raw max_raw max_ctx extra_log_subs pv... (the first pv is LOG)
"""
import json, random, socket, struct, sys, threading, time

import caproto as ca
from caproto.threading.client import Context

port, seconds, min_raw = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
max_raw, max_ctx, extra_log_subs = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
names = sys.argv[7:]
deadline = time.monotonic() + seconds
hard_deadline = time.monotonic() + 60.0
lock = threading.Lock()
stats = {"raw_clients": 0, "raw_events": 0, "raw_errors": 0, "ctx_clients": 0, "ctx_events": 0,
         "ctx_errors": 0, "errors": []}


def note(key, amount=1, error=None):
    with lock:
        stats[key] += amount
        if error is not None and len(stats["errors"]) < 10:
            stats["errors"].append(f"{type(error).__name__}: {error}")


def reset(sock):
    # SO_LINGER 0: close() sends RST, the client vanishes mid-stream.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def pump(sock, circuit, until, stop_at):
    events = 0
    while not until() and time.monotonic() < stop_at:
        data = sock.recv(65536)
        commands, _ = circuit.recv(data)
        for command in commands:
            if command is ca.DISCONNECTED:
                raise ConnectionError("the IOC closed the circuit")
            circuit.process_command(command)
            if isinstance(command, ca.EventAddResponse):
                events += 1
    return events


def raw_client(number):
    sock = socket.create_connection(("127.0.0.1", port), timeout=3.0)
    try:
        circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", port), 0)
        sock.sendall(b"".join(circuit.send(
            ca.VersionRequest(priority=0, version=13),
            ca.HostNameRequest("churn"), ca.ClientNameRequest("churn"))))
        channels = [ca.ClientChannel(name, circuit) for name in names]
        for channel in channels:
            sock.sendall(b"".join(circuit.send(channel.create())))
        connected = lambda: all(ch.states[ca.CLIENT] is ca.CONNECTED for ch in channels)
        pump(sock, circuit, connected, time.monotonic() + 3.0)
        if not connected():
            raise TimeoutError("channels did not connect")
        # LOG (the biggest) several times over: more bytes in flight when the reset comes.
        for channel in channels + [channels[0]] * extra_log_subs:
            sock.sendall(b"".join(circuit.send(channel.subscribe())))
        mode = number % 3
        if mode == 0:
            return 0  # gone before the first update
        # Gone somewhere in the stream, after up to 150 ms of updates.
        return pump(sock, circuit, lambda: False, time.monotonic() + random.uniform(0.0, 0.15))
    finally:
        reset(sock)


def raw_worker(first):
    number = first
    while time.monotonic() < hard_deadline:
        with lock:
            done = stats["raw_clients"] + stats["raw_errors"]
        if done >= max_raw or (done >= min_raw and time.monotonic() >= deadline):
            return
        try:
            events = raw_client(number)
        except Exception as exc:
            note("raw_errors", error=exc)
        else:
            note("raw_clients")
            note("raw_events", events)
        number += 1


def ctx_worker():
    while time.monotonic() < deadline and stats["ctx_clients"] + stats["ctx_errors"] < max_ctx:
        ctx = Context()
        got = threading.Event()
        count = {"n": 0}

        def callback(sub, response):
            count["n"] += 1
            got.set()

        try:
            pvs = ctx.get_pvs(*names, timeout=3.0)
            subs = [pv.subscribe(data_type="native") for pv in pvs]
            for sub in subs:
                sub.add_callback(callback)
            if not got.wait(2.0):
                raise TimeoutError("no update")
            time.sleep(random.uniform(0.0, 0.1))
        except Exception as exc:
            note("ctx_errors", error=exc)
        else:
            note("ctx_clients")
        finally:
            ctx.disconnect()
            ctx.broadcaster.disconnect()
            note("ctx_events", count["n"])


threads = [threading.Thread(target=raw_worker, args=(i * 1000,)) for i in range(4)]
threads.append(threading.Thread(target=ctx_worker))
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(stats))
'''


def test_ioc_survives_hundreds_of_clients_that_vanish_mid_stream(make_ioc, config_dir, tmp_path):
    write_script(config_dir, "background_script.py", CHATTY_SCRIPT)
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    pid = ioc.get("BGRSCRPT_01:PID")
    names = [
        ioc.pv(suffix)
        for suffix in ("BGRSCRPT_01:LOG", "BGRSCRPT_01:MSG", "BGRSCRPT_01:HEARTBEAT")
        + ("BGRSCRPT:HEARTBEAT",)
    ]
    client = tmp_path / "churn_client.py"
    client.write_text(CHURN_CLIENT)
    args = [str(ioc.port), str(CHURN_SECONDS), str(MIN_RAW_CLIENTS), str(MAX_RAW_CLIENTS)]
    args += [str(MAX_CONTEXTS)]
    args += [str(EXTRA_LOG_SUBSCRIPTIONS), *names]
    result = subprocess.run(
        [sys.executable, str(client), *args],
        capture_output=True,
        text=True,
        timeout=CHURN_SECONDS + 120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    summary = f"{stats}\n{result.stderr[-2000:]}"
    assert stats["raw_clients"] >= MIN_RAW_CLIENTS, summary
    assert stats["raw_events"] > stats["raw_clients"], summary  # the IOC kept publishing
    assert stats["ctx_clients"] >= 5 and stats["ctx_events"] > 0, summary
    # A few clients may time out under load; most must have been served.
    assert stats["raw_errors"] <= stats["raw_clients"] // 10, summary

    # The IOC is up, answers, publishes and supervises as before.
    assert ioc.proc.poll() is None, ioc.output()[-5000:]
    assert ioc.get("BGRSCRPT:VERSION", use_monitor=False) is not None
    beat = ioc.get("BGRSCRPT:HEARTBEAT", use_monitor=False)
    wait_for(lambda: ioc.get("BGRSCRPT:HEARTBEAT", use_monitor=False) > beat, 5, "IOC HEARTBEAT")
    slot_beat = ioc.get("BGRSCRPT_01:HEARTBEAT", use_monitor=False)
    wait_for(
        lambda: ioc.get("BGRSCRPT_01:HEARTBEAT", use_monitor=False) > slot_beat, 5, "HEARTBEAT"
    )
    assert ioc.status() == "RUNNING"
    assert ioc.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    assert ioc.get("BGRSCRPT_01:START_CNT", use_monitor=False) == 1
    assert not process_gone(pid)

    # A new subscriber still gets the stream.
    updates = threading.Semaphore(0)
    log = epics.PV(
        ioc.pv("BGRSCRPT_01:LOG"), auto_monitor=True, callback=lambda **kw: updates.release()
    )
    try:
        for _ in range(3):
            assert updates.acquire(timeout=5), "LOG updates stopped"
    finally:
        log.disconnect()

    out = ioc.output()
    assert "Traceback" not in out, out[-5000:]
    assert "mutated" not in out and "changed size" not in out, out[-5000:]
    assert "publishing" not in out, out[-5000:]  # the Publisher's own failure message
    # Nor anything left pending and collected: a circuit's tasks must end with it.
    assert "Task was destroyed but it is pending" not in out, out[-5000:]
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert not errors, "\n".join(errors[:20])


HOLD_CLIENT = r'''
"""Hold N CA circuits subscribed to some PVs and keep reading until the server closes them.

Args: port circuits pv... Prints "ready" once every circuit has had an update; exits when
the server has closed them all (or after 60 s).
"""
import selectors, socket, sys, time

import caproto as ca

port, count, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
selector = selectors.DefaultSelector()
updated = set()
for number in range(count):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", port), 0)
    sock.sendall(b"".join(circuit.send(
        ca.VersionRequest(priority=0, version=13),
        ca.HostNameRequest("hold"), ca.ClientNameRequest("hold"))))
    channels = [ca.ClientChannel(name, circuit) for name in names]
    for channel in channels:
        sock.sendall(b"".join(circuit.send(channel.create())))
    while any(channel.states[ca.CLIENT] is not ca.CONNECTED for channel in channels):
        commands, _ = circuit.recv(sock.recv(65536))
        for command in commands:
            circuit.process_command(command)
    for channel in channels:
        sock.sendall(b"".join(circuit.send(channel.subscribe())))
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ, (number, circuit))

deadline = time.monotonic() + 60.0
open_circuits = count
while open_circuits and time.monotonic() < deadline:
    for key, _ in selector.select(timeout=1.0):
        number, circuit = key.data
        try:
            data = key.fileobj.recv(262144)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            selector.unregister(key.fileobj)
            key.fileobj.close()
            open_circuits -= 1
            continue
        if number not in updated:
            updated.add(number)
            if len(updated) == count:
                print("ready", flush=True)
print("closed" if not open_circuits else f"{open_circuits} still open", flush=True)
'''


SHUTDOWN_PVS = ("LOG", "STATUS", "MSG", "PID", "UPTIME", "HEARTBEAT", "EXIT_CODE", "LOG")
HOLD_CIRCUITS = 40
SHUTDOWN_CYCLES = 8


def test_ioc_shuts_down_promptly_with_streaming_subscribers(make_ioc, config_dir, tmp_path, prefix):
    """SIGTERM while dozens of circuits have updates in flight: the IOC must exit 0 at once.

    A lost cancellation makes the IOC hang for ever at exit only now and then, so
    the test stops a few IOCs in a row.
    """
    write_script(config_dir, "background_script.py", CHATTY_SCRIPT)
    client = tmp_path / "hold_client.py"
    client.write_text(HOLD_CLIENT)
    for cycle in range(SHUTDOWN_CYCLES):
        # A prefix of its own: libca would take a while to find a name again on a new port.
        ioc = make_ioc(prefix=f"{prefix}C{cycle}:").start()
        ioc.wait_status("RUNNING")
        pid = ioc.get("BGRSCRPT_01:PID")
        # What changes as the IOC stops the script: updates are in flight as the server stops.
        names = [ioc.pv(f"BGRSCRPT_01:{pv}") for pv in SHUTDOWN_PVS]
        holder = subprocess.Popen(
            [sys.executable, str(client), str(ioc.port), str(HOLD_CIRCUITS), *names],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert wait_for_line(holder, "ready", 30), "the clients were not all updated"
            ioc.signal(signal.SIGTERM)
            try:
                ioc.proc.wait(10)
            except subprocess.TimeoutExpired:
                out = ioc.output()
                ioc.kill()
                raise AssertionError(
                    f"cycle {cycle}: IOC still running 10 s after SIGTERM:\n{out[-3000:]}"
                ) from None
            assert ioc.stop() == 0, ioc.output()[-3000:]
            assert process_gone(pid)
            assert holder.wait(30) == 0
            assert holder.stdout.read().strip() == "closed"
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            holder.stdout.close()
            holder.stderr.close()
        out = ioc.output()
        assert "Traceback" not in out, out[-5000:]
        assert "Task was destroyed but it is pending" not in out, out[-5000:]


def wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> bool:
    """Read ``proc``'s stdout lines until one equals ``text``; False on EOF or timeout."""
    found = threading.Event()
    stdout = proc.stdout
    assert stdout is not None, "wait_for_line needs stdout=PIPE"

    def read() -> None:
        for line in stdout:
            if line.strip() == text:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    return found.wait(timeout)
