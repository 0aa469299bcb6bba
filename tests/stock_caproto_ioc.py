"""``python -m tests.stock_caproto_ioc ARGS``: the IOC served by caproto's plain asyncio server.

For one purpose: to see that a test of a caproto fix fails without the fix. The
integration harness starts this instead of ``python -m bgrscrpt_ioc`` when
``BGRSCRPT_STOCK_CAPROTO=1`` (see ``tests/integration/harness.py``).
"""

from __future__ import annotations

import sys
from typing import Any

from caproto.asyncio.server import start_server

from bgrscrpt_ioc import app
from bgrscrpt_ioc.cli import main


class _StockContext:
    """In place of :class:`bgrscrpt_ioc.ca.server.IocContext`: caproto's own server
    context, which claims its ports when it runs."""

    def __init__(self, pvdb: dict[str, Any], interfaces: list[str]):
        self.pvdb = pvdb
        self.interfaces = interfaces

    async def claim_ports(self) -> None:
        pass

    async def run(self) -> None:
        await start_server(self.pvdb, interfaces=self.interfaces)


app.IocContext = _StockContext  # type: ignore[misc,assignment]  # replaced for this process

if __name__ == "__main__":
    sys.exit(main())
