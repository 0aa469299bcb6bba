"""The ISIS DAE's PVs as genie_python names them, and the reads background scripts use.

``DAE_PVS_LOOKUP`` maps genie_python's short names to the PVs (after the
instrument prefix) that IBEX's DAE IOC serves; InstrumentScripts' plots take
``DAE_PVS_LOOKUP["runstate"]`` and ``["runnumber"]`` from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

DAE_PVS_LOOKUP = {
    "runstate": "DAE:RUNSTATE",
    "runstate_str": "DAE:RUNSTATE_STR",
    "runnumber": "DAE:RUNNUMBER",
    "period": "DAE:PERIOD",
    "period_rbv": "DAE:PERIOD:RBV",
    "period_sp": "DAE:PERIOD:SP",
    "numperiods": "DAE:NUMPERIODS",
    "periodtype": "DAE:PERIODTYPE",
    "periodseq": "DAE:PERIODSEQ",
    "events": "DAE:EVENTS",
    "mevents": "DAE:MEVENTS",
    "totalcounts": "DAE:TOTALCOUNTS",
    "goodframes": "DAE:GOODFRAMES",
    "goodframesperiod": "DAE:GOODFRAMES_PD",
    "rawframes": "DAE:RAWFRAMES",
    "rawframesperiod": "DAE:RAWFRAMES_PD",
    "uamps": "DAE:GOODUAH",
    "uampsperiod": "DAE:GOODUAH_PD",
    "totaluamps": "DAE:TOTALUAMPS",
    "beamcurrent": "DAE:BEAMCURRENT",
    "countrate": "DAE:COUNTRATE",
    "npratio": "DAE:NPRATIO",
    "title": "DAE:TITLE",
    "title_sp": "DAE:TITLE:SP",
    "display_title": "DAE:TITLE:DISPLAY",
    "rbnum": "ED:RBNUMBER",
    "rbnum_sp": "ED:RBNUMBER:SP",
    "users": "ED:SURNAME",
    "users_dae_sp": "ED:USERNAME:DAE:SP",
    "starttime": "DAE:STARTTIME",
    "runduration": "DAE:RUNDURATION",
    "rundurationperiod": "DAE:RUNDURATION_PD",
    "numspectra": "DAE:NUMSPECTRA",
    "numtimechannels": "DAE:NUMTIMECHANNELS",
    "timingsource": "DAE:DAETIMINGSOURCE",
    "isiscycle": "DAE:ISISCYCLE",
    "statetrans": "DAE:STATETRANS",
    "state_changing": "DAE:STATE:CHANGING",
    "simulation_mode": "DAE:SIM_MODE",
    "errormessage": "DAE:ERRMSGS",
    "allmessages": "DAE:ALLMSGS",
}


# The run states in which a run is on (genie_python's list, in its order).
RUN_ON = ("PAUSING", "BEGINNING", "ABORTING", "RESUMING", "RUNNING", "VETOING", "WAITING", "PAUSED")


class Dae:
    """Reads of the DAE's state for ``genie`` (the run-control commands are not provided)."""

    def __init__(self, api: Any, prefix: str = "") -> None:
        self.api = api
        self.inst_prefix = prefix

    def _pv(self, name: str) -> str:
        return self.inst_prefix + DAE_PVS_LOOKUP[name.lower()]

    def _get(self, name: str, to_string: bool = False) -> Any:
        return self.api.get_pv_value(self._pv(name), to_string)

    def get_run_state(self) -> str:
        try:
            return self._get("runstate", to_string=True)
        except OSError:
            raise OSError("get_run_state: could not get run state") from None

    def get_run_number(self) -> Any:
        return self._get("runnumber")

    def get_rb_number(self) -> Any:
        return self._get("rbnum")

    def get_title(self) -> Any:
        return self._get("title", to_string=True)

    def get_period(self) -> Any:
        return self._get("period")

    def get_num_periods(self) -> Any:
        return self._get("numperiods")

    def get_good_frames(self, period: bool = False) -> Any:
        return self._get("goodframesperiod" if period else "goodframes")

    def get_raw_frames(self, period: bool = False) -> Any:
        return self._get("rawframesperiod" if period else "rawframes")

    def get_uamps(self, period: bool = False) -> Any:
        return self._get("uampsperiod" if period else "uamps")

    def get_events(self) -> Any:
        return self._get("events")

    def get_mevents(self) -> Any:
        return self._get("mevents")

    def get_total_counts(self) -> Any:
        return self._get("totalcounts")

    def get_users(self) -> str:
        """The users as "A, B and C" (empty when they cannot be read)."""
        try:
            raw = str(self._get("users_dae_sp", to_string=True))
            names = [x.strip() for x in raw.split(",")]
            if len(names) > 1:
                return ", ".join(names[:-1]) + " and " + names[-1]
            return names[0]
        except Exception:
            return ""

    def get_starttime(self) -> Any:
        return self._get("starttime")

    def get_time_since_begin(self, get_timedelta: bool) -> Any:
        """Time since the run began (seconds, or a timedelta); only while a run is on."""
        state = self.get_run_state()
        if state not in RUN_ON:
            raise ValueError(
                "get_time_since_begin can only be run in the following runstates: "
                + ", ".join(RUN_ON)
            )
        began = datetime.strptime(self.get_starttime(), "%a %d-%b-%Y %H:%M:%S")
        since = datetime.now() - began
        return since if get_timedelta else since.total_seconds()

    def in_transition(self) -> bool:
        return self._get("statetrans") == "Yes"
