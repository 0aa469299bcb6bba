"""Settings files as the tests and the bench write them."""

from __future__ import annotations


def watch_entry(name: str, pv: str, ioc: str, **keys: object) -> str:
    """One ``[[watch]]`` entry for ``pv``, restarting ``ioc``; a str value starting
    with "{" is written as an inline table, booleans as TOML's true/false."""
    lines = ["[[watch]]", f'name = "{name}"', f'pvs = ["{pv}"]', f'restart = ["{ioc}"]']
    for key, value in keys.items():
        if isinstance(value, str) and not value.startswith("{"):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"
