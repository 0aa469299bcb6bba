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


async def _stock_serve(pvdb: dict[str, Any], interfaces: list[str], **_: Any) -> None:
    await start_server(pvdb, interfaces=interfaces)


app.serve = _stock_serve  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main())
