"""The exceptions genie_python raises for Channel Access failures (same names)."""


class UnableToConnectToPVException(IOError):
    """The PV did not connect (or answer) within the timeout."""

    def __init__(self, pv_name, err=""):
        super().__init__(f"Unable to connect to PV {pv_name}: {err}")
        self.pv_name = pv_name


class ReadAccessException(IOError):
    """The PV could not be read."""

    def __init__(self, pv_name):
        super().__init__(f"Read access denied for PV {pv_name}")
        self.pv_name = pv_name


class WriteAccessException(IOError):
    """The PV could not be written."""

    def __init__(self, pv_name):
        super().__init__(f"Write access denied for PV {pv_name}")
        self.pv_name = pv_name
