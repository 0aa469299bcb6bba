"""Write BENCHMARKS.md from the figures' results. Every verdict is computed here
from the measured numbers; nothing about the outcome is written in advance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import ca_roundtrip, footprint, load, start_latency


def _yes(met: bool | None) -> str:
    if met is None:
        return "not measured"
    return "**yes**" if met else "**NO**"


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞"
        if math.isnan(x):
            return "–"
        return f"{max(x, 0.0) if abs(x) < 1e-9 else x:.{digits}f}"
    return str(x)


def _ratio(x: float, digits: int = 2) -> str:
    return "n/a (peer ≈ 0)" if math.isinf(x) else f"{x:.{digits}f}×"


def _error(name: str, res: dict) -> list[str]:
    return [f"**{name} could not be measured:**", "", "```", res["error"].rstrip(), "```", ""]


def summary_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    r = results.get("start_latency")
    if r and "error" not in r:
        rows.append(
            [
                "1. Start latency (caput START → first statement)",
                f"median {_f(r['ioc_median_ms'], 1)} ms",
                f"bare `python3 script.py`: median {_f(r['bare_median_ms'], 1)} ms",
                f"{_ratio(r['median_pair_ratio'])} (median of paired ratios)",
                f"≤ {r['goal_ratio']}×",
                _yes(r["met"]),
            ]
        )
    elif r:
        rows.append(
            ["1. Start latency", "error", "", "", f"≤ {start_latency.GOAL_RATIO}×", _yes(None)]
        )
    r = results.get("ca_roundtrip")
    if r and "error" not in r:
        for client, c in r["by_client"].items():
            for kind, label in (("get", "caget"), ("put", "caput wait=True")):
                e = c[kind]
                rows.append(
                    [
                        f"2. CA round trip, {label} ({client} libca)",
                        f"p50 {_f(e['ioc']['p50_us'] / 1e3, 3)} ms, "
                        f"p99 {_f(e['ioc']['p99_us'] / 1e3, 3)} ms",
                        f"EPICS base: p50 {_f(e['base']['p50_us'] / 1e3, 3)} ms, "
                        f"p99 {_f(e['base']['p99_us'] / 1e3, 3)} ms",
                        f"p50 {_ratio(e['p50_ratio'])}, p99 {_ratio(e['p99_ratio'])}",
                        f"p50 ≤ {r['goal_p50']}×, p99 ≤ {r['goal_p99']}×",
                        _yes(e["met"]),
                    ]
                )
    elif r:
        rows.append(["2. CA round trip", "error", "", "", "", _yes(None)])
    r = results.get("load")
    if r and "error" not in r:
        ld, nl = r["load"], r["noload"]
        rows.append(
            [
                "3. caput START p99 under load; HEARTBEAT",
                f"p99 {_f(ld['p99_ms'], 1)} ms; {ld['heartbeat']['missed']} beat(s) missed"
                + (f"; {ld['failures']} put(s) failed" if ld["failures"] else ""),
                f"no load: p99 {_f(nl['p99_ms'], 1)} ms",
                _ratio(r["p99_ratio"]),
                f"p99 ≤ {_f(r['goal_p99_ms'], 0)} ms, no missed beat",
                _yes(r["met"]),
            ]
        )
    elif r:
        rows.append(["3. Responsiveness under load", "error", "", "", "", _yes(None)])
    r = results.get("footprint")
    if r and "error" not in r:
        i, b = r["ioc"], r["base"]
        rows.append(
            [
                "4. Footprint, RSS (idle, 2 running scripts)",
                f"{_f(i['rss_max_mb'], 1)} MB",
                f"EPICS base IOC: {_f(b['rss_max_mb'], 1)} MB",
                _ratio(r["rss_ratio"]),
                f"≤ {_f(r['goal_rss_mb'], 0)} MB",
                _yes(r["rss_met"]),
            ]
        )
        rows.append(
            [
                "4. Footprint, CPU (idle, 2 running scripts)",
                f"{_f(i['cpu_pct'], 2)} % of a core",
                f"EPICS base IOC: {_f(b['cpu_pct'], 2)} %",
                _ratio(r["cpu_ratio"]),
                f"≤ {_f(r['goal_cpu_pct'], 0)} %",
                _yes(r["cpu_met"]),
            ]
        )
    elif r:
        rows.append(["4. Footprint", "error", "", "", "", _yes(None)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def _start_section(r: dict) -> list[str]:
    out = ["## 1. Start latency", ""]
    if "error" in r:
        return out + _error("Start latency", r)
    out += [
        f"**How:** one IOC, slot BGRSCRPT_01 holding a script whose first statement (one line) "
        f"sends `time.monotonic()` in a UDP datagram to the bench on 127.0.0.1 (port passed in "
        f"`${start_latency.PORT_VAR}`, which the IOC hands on to its scripts), then ends with "
        f'status 0. Settings `autorestart = "Off"`, `startsecs = 0`, so the slot goes to '
        f"EXITED and each `epics.caput(BGRSCRPT_01:START, 1)` starts it again. Latency = the "
        f"script's stamp − `time.monotonic()` just before the caput (CLOCK_MONOTONIC is "
        f"system-wide). The bench waits for STATUS EXITED before the next start. Peer: the same "
        f"file started by the bench with `subprocess.Popen([sys.executable, script])`, same "
        f"environment, same cwd. {r['repeats']} pairs, IOC and bare alternating, after "
        f"{start_latency.WARMUP} warm-up pairs; the goal figure is the median of the "
        f"{r['repeats']} per-pair ratios.",
        "",
    ]
    out += _table(
        ["", "median", "p90", "min", "max"],
        [
            [
                "via the IOC (caput START)",
                *(
                    _f(v, 1) + " ms"
                    for v in (
                        r["ioc_median_ms"],
                        r["ioc_p90_ms"],
                        min(r["ioc_ms"]),
                        max(r["ioc_ms"]),
                    )
                ),
            ],
            [
                "bare `python3 script.py`",
                *(
                    _f(v, 1) + " ms"
                    for v in (
                        r["bare_median_ms"],
                        r["bare_p90_ms"],
                        min(r["bare_ms"]),
                        max(r["bare_ms"]),
                    )
                ),
            ],
        ],
    )
    out += [
        f"Median of paired ratios: **{_ratio(r['median_pair_ratio'])}**; ratio of medians: "
        f"{_ratio(r['ratio_of_medians'])}; the IOC adds "
        f"{_f(r['ioc_median_ms'] - r['bare_median_ms'], 1)} ms "
        f"at the median. Goal ≤ {r['goal_ratio']}×: {_yes(r['met'])}. "
        f'Slot MSG after the last run: "{r["last_msg"]}".',
        "",
    ]
    return out


def _ca_section(r: dict) -> list[str]:
    out = ["## 2. Channel Access round trip", ""]
    if "error" in r:
        return out + _error("CA round trip", r)
    out += [
        f"**How:** the IOC (both slots without a script, STOPPED) and an EPICS base IOC "
        f"(`python -m epicscorelibs.ioc` loading db_templates/bgrscrpt.db for BGRSCRPT_01 and "
        f"_02 plus db_templates/bgrscrpt_ioc.db: the same records) run at the same time, each "
        f"on its own loopback port with its own prefix. The bench uses pyepics (libca), "
        f"once with each libca build below, each run in a process of its own: "
        f"`epics.caget(pv)` cycling over {', '.join(ca_roundtrip.GET_PVS)}, and "
        f"`epics.caput(pv, value, wait=True)` (put with completion callback) alternating "
        f"BGRSCRPT_01:WATCHDOG 0/5 and BGRSCRPT_01:AUTORESTART 1/2. Each call is timed with "
        f"`time.perf_counter()`; {r['rounds']} rounds × {r['per_round']} gets and "
        f"{r['per_round']} puts per server, servers alternating (first server swapped each "
        f"round; short rounds so that noise from other processes falls on both alike), after "
        f"{ca_roundtrip.WARMUP} warm-up calls of each; percentiles over all "
        f"{r['rounds'] * r['per_round']} calls of a kind. (`epics.caput` keeps a monitored PV "
        f"per name, as every pyepics client does, so each put also triggers a monitor update "
        f"on the same circuit, from both servers alike.) Which libca pyepics loads changes "
        f"the figure: pyepics ships its own, and loads epicscorelibs' instead when "
        f"epicscorelibs was imported first. The goal counts as met only when it is met "
        f"with both.",
        "",
    ]
    for client, c in r["by_client"].items():
        out += [f"**Client: {dict(ca_roundtrip.CLIENTS)[client]}** — `{c['libca']}`", ""]
        rows = []
        for kind in ("get", "put"):
            e = c[kind]
            for who, label in (("ioc", "bgrscrpt_ioc"), ("base", "EPICS base")):
                s = e[who]
                rows.append(
                    [
                        kind,
                        label,
                        f"{_f(s['p50_us'] / 1e3, 3)} ms",
                        f"{_f(s['p99_us'] / 1e3, 3)} ms",
                        f"{_f(s['max_us'] / 1e3, 3)} ms",
                        f"{100 * s['slow_share']:.1f} %",
                    ]
                )
            rows.append(
                [
                    kind,
                    "**ratio**",
                    f"**{_ratio(e['p50_ratio'])}**",
                    f"**{_ratio(e['p99_ratio'])}**",
                    "",
                    "",
                ]
            )
        slow = f"calls ≥ {_f(ca_roundtrip.SLOW_US / 1e3, 0)} ms"
        out += _table(["op", "server", "p50", "p99", "max", slow], rows)
        for kind in ("get", "put"):
            e = c[kind]
            out.append(
                f"- {kind}: goal p50 ≤ {r['goal_p50']}× and p99 ≤ {r['goal_p99']}×: "
                f"{_yes(e['met'])} (median of the per-round p50 ratios: "
                f"{_ratio(e['median_round_p50_ratio'])})."
            )
        out.append("")
    nd = r.get("tcp_nodelay") or {}
    if nd:
        desc = []
        for who, label in (("ioc", "bgrscrpt_ioc"), ("base", "EPICS base")):
            v = nd.get(who)
            desc.append(
                f"{label}: "
                + ("could not be read" if v is None else f"{sum(v)} of {len(v)} with TCP_NODELAY")
            )
        out.append(
            "- Diagnostic, read from the servers' own sockets (pidfd_getfd) while the bench "
            "was connected — established CA circuits: " + "; ".join(desc) + "."
        )
    out.append("")
    return out


def _load_section(r: dict) -> list[str]:
    out = ["## 3. Responsiveness under load", ""]
    if "error" in r:
        return out + _error("Responsiveness under load", r)
    ld, nl = r["load"], r["noload"]
    rates = ld["lines_per_s"]
    out += [
        f"**How:** one IOC; both slots run a script that, while a flag file exists, writes "
        f"numbered fixed-length lines ({load.LINE_LEN} bytes) to stdout in chunks of "
        f"{load.LINES_PER_CHUNK} with `os.write`, paced at {load.TARGET_RATE:,} lines/s. "
        f"Load = both floods + {r['clients']} CA clients: {r['clients']} separate pyepics "
        f"(libca) **processes** (`bench/monitor_client.py`), each monitoring all "
        f"{r['pvs_per_client']} PVs the IOC serves (from its `--list-pvs`), i.e. "
        f"{r['clients']} circuits and {r['clients'] * r['pvs_per_client']} subscriptions. The "
        f"bench itself puts `epics.caput(BGRSCRPT_01:START, 1, wait=True)` to the running slot "
        f"(the no-op path) every {_f(r['put_period_s'] * 1e3, 0)} ms, timed with "
        f"`time.perf_counter()`, and monitors BGRSCRPT:HEARTBEAT (a jump of more than 1 "
        f"between consecutive updates counts the beats in between as missed). Peer: the same "
        f"put loop for {_f(r['noload_s'], 0)} s on the same IOC with the floods paused and no "
        f"other client. Then clients start, the floods start, {_f(load.WARMUP_S, 0)} s "
        f"warm-up, and {_f(r['load_s'], 0)} s of measurement. Everything shares the machine's "
        f"cores (clients and scripts included).",
        "",
    ]
    out += _table(
        ["", "puts", "p50", "p99", "max", "IOC CPU", "HEARTBEAT updates / missed / longest gap"],
        [
            [
                "no load (peer)",
                str(nl["puts"]),
                f"{_f(nl['p50_ms'], 1)} ms",
                f"{_f(nl['p99_ms'], 1)} ms",
                f"{_f(nl['max_ms'], 1)} ms",
                f"{_f(nl['ioc_cpu_pct'], 1)} %",
                f"{nl['heartbeat']['updates']} / {nl['heartbeat']['missed']} / "
                f"{_f(nl['heartbeat']['max_gap_s'], 2)} s",
            ],
            [
                "under load",
                str(ld["puts"]),
                f"{_f(ld['p50_ms'], 1)} ms",
                f"**{_f(ld['p99_ms'], 1)} ms**",
                f"{_f(ld['max_ms'], 1)} ms",
                f"{_f(ld['ioc_cpu_pct'], 1)} %",
                f"{ld['heartbeat']['updates']} / **{ld['heartbeat']['missed']}** / "
                f"{_f(ld['heartbeat']['max_gap_s'], 2)} s",
            ],
        ],
    )
    out += [
        "- Achieved output rate over the load window (log growth ÷ line length): "
        + ", ".join(f"{s} {v:,.0f} lines/s" for s, v in rates.items())
        + f" (target {load.TARGET_RATE:,} each).",
        f"- p99 of each {_f(load.WINDOW_S, 0)} s window under load: "
        + ", ".join(_f(v, 1) for v in ld["window_p99_ms"])
        + f" ms (median {_f(r['median_window_p99_ms'], 1)} ms). Failed puts: {ld['failures']}.",
        f"- Fan-out: the {r['clients']} clients received {r['fanout']['per_s']:,.0f} monitor "
        f"updates/s ({r['fanout']['bytes_per_s'] / 1e3:,.0f} kB/s of values) while the floods "
        f"ran; per client, the busiest PVs: "
        + ", ".join(f"{k} {v:.1f}/s" for k, v in r["fanout"]["top_pvs_per_client_per_s"].items())
        + "; all clients connected every PV: "
        f"{'yes' if all(c == r['pvs_per_client'] for c in r['clients_connected']) else 'no'} "
        f"(ready after {_f(r['clients_ready_s'], 1)} s).",
        f"- IOC CPU per monitor update delivered under load: "
        f"{ld['ioc_cpu_pct'] / 100 / max(r['fanout']['per_s'], 1e-9) * 1e6:,.0f} µs "
        f"({_f(ld['ioc_cpu_pct'], 1)} % of a core ÷ {r['fanout']['per_s']:,.0f} updates/s).",
        f"- Whole machine busy {_f(ld['machine_busy_pct'], 0)} % of its "
        f"{ld['cores']} cores during the load window; slot BGRSCRPT_01 HEARTBEAT missed "
        f"{ld['slot_heartbeat']['missed']} beat(s); slot states afterwards: "
        + ", ".join(f"{k} {v}" for k, v in r["final_status"].items())
        + ".",
        f"- Ratio p99 under load / p99 no load: {_ratio(r['p99_ratio'])}. Goal p99 ≤ "
        f"{_f(r['goal_p99_ms'], 0)} ms and no missed beat: {_yes(r['met'])}.",
        "",
    ]
    return out


def _footprint_section(r: dict) -> list[str]:
    out = ["## 4. Footprint", ""]
    if "error" in r:
        return out + _error("Footprint", r)
    i, b = r["ioc"], r["base"]
    out += [
        f"**How:** the IOC with two slots whose scripts sleep (both RUNNING); the only CA "
        f"client is the bench, which read both slots' STATUS and PID (pyepics keeps those "
        f"channels, monitored); its channels from earlier figures were cleared, so no search "
        f"for a stopped IOC reaches this one; "
        f"after {_f(footprint.SETTLE_S, 0)} s psutil samples the IOC process once a second for "
        f"{_f(r['measure_s'], 0)} s: RSS (max and median; PSS and USS too), CPU% = CPU time "
        f"used (user + system) ÷ wall time over the whole window (and per "
        f"{_f(footprint.WINDOW_S, 0)} s window). The scripts are not counted; the IOC's "
        f"keeper process (the scripts' parent) is shown separately. Peer, measured the same "
        f"way right after: `python -m epicscorelibs.ioc` loading the same records (two slots of "
        f"db_templates/bgrscrpt.db + db_templates/bgrscrpt_ioc.db). That peer is a Python "
        f"interpreter embedding EPICS base with both its CA server and the QSRV pvAccess "
        f"server; its records are passive, while the IOC updates HEARTBEAT/UPTIME every second.",
        "",
    ]
    out += _table(
        [
            "",
            "RSS max",
            "RSS median",
            "PSS",
            "USS",
            "CPU (whole window)",
            "CPU, median 5 s window",
            "threads",
        ],
        [
            [
                "bgrscrpt_ioc",
                f"**{_f(i['rss_max_mb'], 1)} MB**",
                f"{_f(i['rss_median_mb'], 1)} MB",
                f"{_f(i['pss_median_mb'], 1)} MB",
                f"{_f(i['uss_median_mb'], 1)} MB",
                f"**{_f(i['cpu_pct'], 2)} %**",
                f"{_f(i['median_window_cpu_pct'], 2)} %",
                str(i["threads"]),
            ],
            [
                "EPICS base IOC",
                f"{_f(b['rss_max_mb'], 1)} MB",
                f"{_f(b['rss_median_mb'], 1)} MB",
                f"{_f(b['pss_median_mb'], 1)} MB",
                f"{_f(b['uss_median_mb'], 1)} MB",
                f"{_f(b['cpu_pct'], 2)} %",
                f"{_f(b['median_window_cpu_pct'], 2)} %",
                str(b["threads"]),
            ],
        ],
    )
    out += [
        f"- The IOC's helper process(es) ({', '.join(i['helpers']) or 'none'}): "
        f"{_f(i['helpers_rss_mb'], 1)} MB RSS in addition.",
        f"- Ratios IOC / base: RSS {_ratio(r['rss_ratio'])}, CPU {_ratio(r['cpu_ratio'])} "
        f"(CPU time is counted in clock ticks of 10 ms: "
        f"{_f(1.0 / r['measure_s'], 3)} % resolution over this window).",
        f"- Goal RSS ≤ {_f(r['goal_rss_mb'], 0)} MB: {_yes(r['rss_met'])}; "
        f"CPU ≤ {_f(r['goal_cpu_pct'], 0)} % of a core: {_yes(r['cpu_met'])}.",
        "",
    ]
    return out


def _findings(results: dict[str, dict]) -> list[str]:
    """Observations that follow from this run's numbers (each conditional on them)."""
    notes = []
    ca = results.get("ca_roundtrip", {})
    nd = ca.get("tcp_nodelay") or {}
    ioc_nd, base_nd = nd.get("ioc"), nd.get("base")
    if ioc_nd is not None and ioc_nd and not any(ioc_nd) and base_nd and all(base_nd):
        put = next(iter(ca["by_client"].values()))["put"]
        notes.append(
            "- The IOC's Channel Access circuits run with Nagle's algorithm on (TCP_NODELAY "
            "off on every established circuit), the EPICS base IOC's with it off. A put's "
            "response that follows a monitor update still unacknowledged on the same circuit "
            "waits for the client's delayed ACK (~40 ms on Linux): put p50 "
            f"{_f(put.get('ioc', {}).get('p50_us', float('nan')) / 1e3, 1)} ms here against "
            f"{_f(put.get('base', {}).get('p50_us', float('nan')) / 1e3, 2)} ms for EPICS base, "
            f"and {100 * put.get('ioc', {}).get('slow_share', float('nan')):.0f} % of the IOC's "
            f"puts took ≥ {_f(ca_roundtrip.SLOW_US / 1e3, 0)} ms (EPICS base: "
            f"{100 * put.get('base', {}).get('slow_share', float('nan')):.0f} %). "
            "caproto 1.3's asyncio server creates its TCP sockets with protocol 0, so asyncio's "
            "own TCP_NODELAY (applied only when `sock.proto == IPPROTO_TCP`) never happens."
        )
    ld = results.get("load", {})
    if ld and "error" not in ld:
        nl = ld["noload"]
        if nl["p99_ms"] > 10 * max(nl["p50_ms"], 1e-3):
            notes.append(
                f"- Even without load the no-op START round trip has p50 {_f(nl['p50_ms'], 1)} ms "
                f"but p99 {_f(nl['p99_ms'], 1)} ms: a bimodal distribution, the slow mode near "
                "the 40 ms delayed-ACK timer."
            )
    return notes


def write(
    path: Path,
    *,
    info: dict[str, str],
    results: dict[str, dict],
    leftovers: list,
    started: str,
    plugins: dict[str, Any] | None = None,
    duration_s: float,
) -> str:
    plugins = plugins or {}
    rows = summary_rows(results)
    for name, module in plugins.items():
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append([name, "error", "", "", "", _yes(None)])
        else:
            rows += module.summary_rows(r)
    lines = [
        "# BENCHMARKS",
        "",
        f"Written by `make bench` (`python -m bench`) on {started}, in {duration_s:.0f} s. "
        "Every figure is a ratio against a peer measured in the same run; all traffic on "
        "127.0.0.1 (`EPICS_CA_AUTO_ADDR_LIST=NO`, `EPICS_CA_ADDR_LIST` = exactly the bench's "
        "ports; every server bound to 127.0.0.1 on its own port). Regenerate with `make bench`.",
        "",
        "## Summary",
        "",
    ]
    lines += _table(
        ["figure", "bgrscrpt_ioc", "peer (same run)", "ratio", "goal", "goal met"], rows
    )
    # A figure that cannot run here (e.g. it needs root) says why in its own rows.
    met = [r.get("met") for r in results.values() if "error" not in r and "not_measured" not in r]
    errors = [k for k, r in results.items() if "error" in r or "not_measured" in r]
    lines += [
        f"Goals met: {sum(1 for m in met if m)} of {len(met)} figures measured"
        + (f"; not measured: {', '.join(errors)}" if errors else "")
        + ".",
        "",
    ]
    notes = _findings(results)
    if notes:
        lines += ["### What the numbers show", "", *notes, ""]
    lines += ["## Machine", ""]
    lines += _table(["", ""], [[k, v] for k, v in info.items()])
    lines += [
        "The machine may be shared (the 1-minute load average at the start is above); "
        "peers are interleaved with or measured right next to the IOC to share that noise.",
        "",
    ]
    sections = {
        "start_latency": _start_section,
        "ca_roundtrip": _ca_section,
        "load": _load_section,
        "footprint": _footprint_section,
    }
    for name, section in sections.items():
        if name in results:
            lines += section(results[name])
    for name, module in plugins.items():
        r = results.get(name)
        if r is not None:
            lines += _error(name, r) if "error" in r else [*module.section(r), ""]
    clean = {
        name: r.get("ioc_stopped_cleanly", r.get("ioc", {}).get("stopped_cleanly"))
        for name, r in results.items()
        if "error" not in r and "not_measured" not in r
    }
    lines += [
        "## Clean-up",
        "",
        "IOCs stopped with SIGTERM (clean exit within 30 s: "
        + ", ".join(f"{k} {'yes' if v else 'NO' if v is False else '?'}" for k, v in clean.items())
        + "); EPICS base IOCs asked to exit on stdin, then SIGKILLed. Processes of this run "
        "still alive at the end (each SIGKILLed): "
        + ("none." if not leftovers else "; ".join(f"{pid} `{cmd}`" for pid, cmd in leftovers)),
        "",
        "<details><summary>Raw results (JSON)</summary>",
        "",
        "```json",
        json.dumps(results, indent=1, default=str),
        "```",
        "",
        "</details>",
        "",
    ]
    text = "\n".join(lines)
    path.write_text(text)
    return "\n".join(_table(["figure", "bgrscrpt_ioc", "peer", "ratio", "goal", "met"], rows))
