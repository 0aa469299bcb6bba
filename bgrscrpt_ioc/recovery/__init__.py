"""Alarm recovery adapters: Channel Access monitors, procServ and procServControl restarts,
and the runner that carries out the watch core's decisions."""
