"""The ``headers`` tap: set, add and remove header fields of HTTP requests and responses.

Works the same on HTTP/1.1 and HTTP/2 (and on a WebSocket upgrade, which is
an HTTP/1.1 request). Operations run in this order on every message of the
chosen direction: ``remove``, then ``set`` (replaces every field of that
name, or adds it), then ``add`` (appends, keeping what is there).

Options (each a ``Name: value`` entry, or for ``remove`` a name; give an
option several times, or a list in the config file, for several entries):
    set: fields to set.
    add: fields to append.
    remove: field names to remove.
    direction: ``to_server`` (default: requests), ``to_client`` (responses)
        or ``both``.
"""

from __future__ import annotations

from tinspect import Flow, Request, Response, Tap, Unit, to_bytes
from tinspect.taplib import directions

__all__ = ["HeadersTap"]


def _entries(value: str | list[str] | tuple[str, ...], option: str, *, named_only: bool = False) -> list:
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if named_only:
            name = item.strip()
            if not name or ":" in name:
                raise ValueError(f"{option}: expected a field name, not {item!r}")
            out.append(name.encode("latin-1"))
            continue
        name, sep, field_value = item.partition(":")
        name = name.strip()
        if not sep or not name or any(c in name for c in " \t\r\n"):
            raise ValueError(f"{option}: expected 'Name: value', not {item!r}")
        try:
            out.append((to_bytes(name), to_bytes(field_value.strip())))
        except ValueError as e:
            raise ValueError(f"{option}: {e}") from None
    return out


class HeadersTap(Tap):
    """Edits header fields; see the module docstring."""

    kinds = (Request, Response)
    list_options = frozenset({"set", "add", "remove"})

    def __init__(self, set: str | list[str] = (), add: str | list[str] = (), remove: str | list[str] = (),
                 direction: str = "to_server") -> None:
        self.set = _entries(set, "set")
        self.add = _entries(add, "add")
        self.remove = _entries(remove, "remove", named_only=True)
        if not (self.set or self.add or self.remove):
            raise ValueError("nothing to do: give set, add or remove")
        self.directions = directions(direction)

    def handle(self, unit: Unit, flow: Flow) -> Unit:
        if unit.direction not in self.directions or getattr(unit, "interim", False):
            return unit
        headers = unit.headers
        for name in self.remove:
            headers.remove(name)
        for name, value in self.set:
            headers[name] = value
        for name, value in self.add:
            headers.add(name, value)
        return unit
