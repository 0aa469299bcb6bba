"""Write a :class:`Screen` as a CS-Studio BOY file (``.opi``), what the IBEX GUI opens."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .layout import Colour, Screen, Widget

# BOY's format_type: 4 is String, which shows a char waveform as text.
FORMAT_STRING = "4"
PREFIX = "org.csstudio.opibuilder.widgets."

TYPES = {
    "label": "Label",
    "text": "TextUpdate",
    "log": "TextUpdate",
    "button": "ActionButton",
    "link": "ActionButton",
    "combo": "combo",
    "entry": "TextInput",
    "led": "LED",
    "box": "Rectangle",
}


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _colour(parent: ET.Element, tag: str, rgb: Colour) -> None:
    holder = _sub(parent, tag)
    _sub(holder, "color", red=str(rgb[0]), green=str(rgb[1]), blue=str(rgb[2]))


def _widget(parent: ET.Element, n: int, w: Widget) -> None:
    e = _sub(parent, "widget", typeId=PREFIX + TYPES[w.kind], version="1.0.0")
    _sub(e, "name", f"{w.kind}_{n}")
    for tag, value in (("x", w.x), ("y", w.y), ("width", w.w), ("height", w.h)):
        _sub(e, tag, str(value))
    if w.pv is not None and w.kind != "button":
        _sub(e, "pv_name", w.pv)
    if w.text:
        _sub(e, "text", w.text)
    if w.bold:
        font = _sub(e, "font")
        _sub(font, "opifont.name", "Default Bold", fontName="Sans", height="10", style="1")
    if w.foreground is not None:
        _colour(e, "foreground_color", w.foreground)
    if w.kind == "box":
        _colour(e, "background_color", w.background or (255, 255, 255))
        _sub(e, "line_width", "0")
    if w.kind in ("text", "log"):
        _sub(e, "border_alarm_sensitive", "true")
        _sub(e, "show_units", "true" if w.units else "false")
        if w.kind == "log":
            _sub(e, "format_type", FORMAT_STRING)
            _sub(e, "wrap_words", "false")
            _sub(e, "vertical_alignment", "0")
            _sub(e, "transparent", "false")
            _colour(e, "background_color", (250, 250, 250))
        elif w.colours:
            _sub(e, "transparent", "false")
            _sub(e, "horizontal_alignment", "1")
            _rules(e, w)
        else:
            _sub(e, "format_type", FORMAT_STRING if w.units is False else "0")
    if w.kind == "led":
        _sub(e, "border_alarm_sensitive", "true")
    if w.kind == "button":
        actions = _sub(e, "actions", hook="false", hook_all="false")
        action = _sub(actions, "action", type="WRITE_PV")
        _sub(action, "pv_name", w.pv)
        _sub(action, "value", w.value)
        _sub(action, "timeout", "10")
        _sub(action, "confirm_message", "")
        _sub(action, "description", w.text)
    if w.kind == "link":
        actions = _sub(e, "actions", hook="false", hook_all="false")
        action = _sub(actions, "action", type="OPEN_WEBPAGE")
        _sub(action, "hyperlink", w.url)
        _sub(action, "description", w.text)


def _rules(e: ET.Element, w: Widget) -> None:
    rules = _sub(e, "rules")
    rule = _sub(rules, "rule", name="state colour", prop_id="background_color", out_exp="false")
    for index, rgb in sorted(w.colours.items()):
        exp = _sub(rule, "exp", bool_exp=f"pv0=={index}")
        value = _sub(exp, "value")
        _sub(value, "color", red=str(rgb[0]), green=str(rgb[1]), blue=str(rgb[2]))
    _sub(rule, "pv", w.pv, trig="true")


def write_opi(screen: Screen) -> str:
    root = ET.Element("display", typeId="org.csstudio.opibuilder.Display", version="1.0.0")
    _sub(root, "name", screen.title)
    macros = _sub(root, "macros")
    _sub(macros, "include_parent_macros", "true")
    for name, value in screen.macros.items():
        _sub(macros, name, value)
    _sub(root, "width", str(screen.width))
    _sub(root, "height", str(screen.height))
    _colour(root, "background_color", (255, 255, 255))
    for n, widget in enumerate(screen.widgets):
        _widget(root, n, widget)
    ET.indent(root, "  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
