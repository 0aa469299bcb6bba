"""Write a :class:`Screen` as a Phoebus Display Builder file (``.bob``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .layout import Colour, Screen, Widget

# Phoebus FormatOption: STRING shows a char waveform as text.
FORMAT_STRING = "6"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _colour(parent: ET.Element, tag: str, rgb: Colour) -> None:
    holder = _sub(parent, tag)
    _sub(holder, "color", red=str(rgb[0]), green=str(rgb[1]), blue=str(rgb[2]))


def _font(parent: ET.Element) -> None:
    holder = _sub(parent, "font")
    _sub(holder, "font", family="Liberation Sans", style="BOLD", size="14.0")


TYPES = {
    "label": ("label", "2.0.0"),
    "text": ("textupdate", "2.0.0"),
    "log": ("textupdate", "2.0.0"),
    "button": ("action_button", "3.0.0"),
    "link": ("action_button", "3.0.0"),
    "combo": ("combo", "2.0.0"),
    "entry": ("textentry", "3.0.0"),
    "led": ("led", "2.0.0"),
    "box": ("rectangle", "2.0.0"),
}


def _widget(parent: ET.Element, n: int, w: Widget) -> None:
    kind, version = TYPES[w.kind]
    e = _sub(parent, "widget", type=kind, version=version)
    _sub(e, "name", f"{w.kind}_{n}")
    for tag, value in (("x", w.x), ("y", w.y), ("width", w.w), ("height", w.h)):
        _sub(e, tag, str(value))
    if w.pv is not None and w.kind != "button":
        _sub(e, "pv_name", w.pv)
    if w.text:
        _sub(e, "text", w.text)
    if w.bold:
        _font(e)
    if w.foreground is not None:
        _colour(e, "foreground_color", w.foreground)
    if w.kind == "box":
        _colour(e, "background_color", w.background or (255, 255, 255))
        _sub(e, "line_width", "0")
    if w.kind in ("text", "log"):
        _sub(e, "border_alarm_sensitive", "true")
        _sub(e, "show_units", "true" if w.units else "false")
        if w.kind == "log":
            _sub(e, "format", FORMAT_STRING)
            _sub(e, "wrap_words", "false")
            _sub(e, "vertical_alignment", "0")
            _sub(e, "transparent", "false")
            _colour(e, "background_color", (250, 250, 250))
        elif w.colours:
            _sub(e, "transparent", "false")
            _sub(e, "horizontal_alignment", "1")
            _rules(e, w)
        else:
            _sub(e, "format", FORMAT_STRING if w.units is False else "0")
    if w.kind == "button":
        actions = _sub(e, "actions")
        action = _sub(actions, "action", type="write_pv")
        _sub(action, "pv_name", w.pv)
        _sub(action, "value", w.value)
        _sub(action, "description", w.text)
    if w.kind == "link":
        actions = _sub(e, "actions")
        action = _sub(actions, "action", type="open_webpage")
        _sub(action, "url", w.url)
        _sub(action, "description", w.text)


def _rules(e: ET.Element, w: Widget) -> None:
    """Background by enum value: the state's colour, whatever its alarm severity."""
    rules = _sub(e, "rules")
    rule = _sub(rules, "rule", name="state colour", prop_id="background_color", out_exp="false")
    for index, rgb in sorted(w.colours.items()):
        exp = _sub(rule, "exp", bool_exp=f"pv0=={index}")
        value = _sub(exp, "value")
        _sub(value, "color", red=str(rgb[0]), green=str(rgb[1]), blue=str(rgb[2]))
    _sub(rule, "pv_name", w.pv)


def write_bob(screen: Screen) -> str:
    root = ET.Element("display", version="2.0.0")
    _sub(root, "name", screen.title)
    macros = _sub(root, "macros")
    for name, value in screen.macros.items():
        _sub(macros, name, value)
    _sub(root, "width", str(screen.width))
    _sub(root, "height", str(screen.height))
    for n, widget in enumerate(screen.widgets):
        _widget(root, n, widget)
    ET.indent(root, "  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
