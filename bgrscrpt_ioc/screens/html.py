"""The status screen as an HTML page, drawn like the Phoebus runtime draws it.

For documentation and a quick look in a browser: the same :class:`Screen` as the
``.bob`` and ``.opi`` files, filled with values read once over Channel Access
(or given), with the alarm-sensitive borders and state colours of the real
screens. It is a picture of the screen, not a live display.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

from .layout import Colour, Screen, Widget

# How CS-Studio draws an alarm-sensitive border, by severity (0..3), and a
# disconnected PV.
ALARM_BORDERS = {1: "#ffb000", 2: "#ff0000", 3: "#ff00ff"}
DISCONNECTED = "#ff00ff"


def _css(rgb: Colour) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def _widget(w: Widget, values: Mapping[str, tuple[str, int, int | None]]) -> str:
    style = [f"left:{w.x}px", f"top:{w.y}px", f"width:{w.w}px", f"height:{w.h}px"]
    if w.bold:
        style.append("font-weight:bold")
    if w.foreground is not None:
        style.append(f"color:{_css(w.foreground)}")
    text = w.text
    classes = [w.kind]
    if w.kind == "box":
        style.append(f"background:{_css(w.background or (255, 255, 255))}")
    elif w.pv is not None and w.kind not in ("button",):
        reading = values.get(w.pv)
        if reading is None:
            classes.append("disconnected")
            style.append(f"border:2px dashed {DISCONNECTED}")
            text = w.pv
        else:
            text, severity, index = reading
            if severity in ALARM_BORDERS:
                style.append(f"border:2px solid {ALARM_BORDERS[severity]}")
            if index is not None and index in w.colours:
                style.append(f"background:{_css(w.colours[index])}")
        if w.kind == "led":
            on = reading is not None and reading[2] == 1
            style.append(f"background:{'#2ec02e' if on else '#1d5e1d'}")
            text = ""
    elif w.kind == "link":
        text = f"{w.text} ↗"
    return f'<div class="{" ".join(classes)}" style="{";".join(style)}">{html.escape(text)}</div>'


def write_html(screen: Screen, values: Mapping[str, tuple[str, int, int | None]]) -> str:
    """``values``: PV name -> (text, severity 0..3, enum index or None); missing = disconnected."""
    body = "\n".join(_widget(w, values) for w in screen.widgets)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(screen.title)}</title>
<style>
body {{ margin:0; font: 13px "Liberation Sans", Arial, sans-serif; background:#fff; }}
#screen {{ position:relative; width:{screen.width}px; height:{screen.height}px; }}
#screen div {{ position:absolute; box-sizing:border-box; overflow:hidden; white-space:nowrap;
  padding:2px 4px; }}
.label {{ padding-top:4px !important; }}
.text, .combo, .entry {{ background:#f0f0f0; border:1px solid #c8c8c8; }}
.log {{ background:#fafafa; border:1px solid #c8c8c8; white-space:pre !important;
  font: 12px "DejaVu Sans Mono", monospace; }}
.button, .link {{ background:linear-gradient(#fdfdfd,#dcdcdc); border:1px solid #999;
  border-radius:3px; text-align:center; }}
.combo::after {{ content:"▾"; position:absolute; right:4px; }}
.led {{ border-radius:50%; border:1px solid #444 !important; padding:0 !important; }}
.disconnected {{ color:#a0a; font-style:italic; }}
</style></head>
<body><div id="screen">
{body}
</div></body></html>
"""
