"""The exceptions genie_python raises for Channel Access failures: same names, bases and texts.

Scripts catch them by class (``except UnableToConnectToPVException``) and
sometimes by base (``except IOError``, ``except KeyError``), so both match
genie_python's.
"""


class UnableToConnectToPVException(IOError):  # noqa: N818 - genie_python's name
    """The PV did not connect (or answer) in time."""

    def __init__(self, pv_name: str, err: object) -> None:
        super().__init__(f"Unable to connect to PV {pv_name}: {err}")


class InvalidEnumStringException(KeyError):  # noqa: N818 - genie_python's name
    """A string written to an enum PV is none of its states."""

    def __init__(self, pv_name: str, valid_states: object) -> None:
        super().__init__(
            f"Invalid string value entered for {pv_name}. Valid strings are {valid_states}"
        )


class ReadAccessException(IOError):  # noqa: N818 - genie_python's name
    """The PV exists but may not be read."""

    def __init__(self, pv_name: str) -> None:
        super().__init__(f"Read access denied for PV {pv_name}")


class WriteAccessException(IOError):  # noqa: N818 - genie_python's name
    """The PV may not be written (no write access, or its record's DISP is set)."""

    def __init__(self, pv_name: str) -> None:
        super().__init__(f"Write access denied for PV {pv_name}")
