"""`Headers`: the ordered header fields of an HTTP message, for taps.

HTTP/1.1 and HTTP/2 both hand their header fields to taps as a `Headers`
object. It wraps the list of ``(name, value)`` byte pairs the codec produced
(no copy), keeps their order and, for HTTP/1.1, the case of every name, and
offers a small dict-like API in ``str``:

    >>> h = Headers([(b"Host", b"example.org"), (b"Accept", b"*/*")])
    >>> h["host"]
    'example.org'
    >>> h["X-Seen-By"] = "tinspect"
    >>> del h["accept"]

Names compare case-insensitively. ``str`` names and values are encoded as
Latin-1 (what HTTP allows in field values); ``bytes`` are taken as they are.
Values are checked for CR, LF and NUL when set, so a tap cannot split a
message by accident. `fields` is the underlying list for code that wants raw
bytes (the codecs, and taps that care about speed).
"""

from __future__ import annotations

from typing import Iterable, Iterator

__all__ = ["Headers", "to_bytes"]


def to_bytes(value: str | bytes) -> bytes:
    """``value`` as bytes: ``str`` encoded as Latin-1, ``bytes`` unchanged.

    Raises:
        ValueError: a character outside Latin-1, or CR, LF or NUL (which
            would let a value break out of its header line).
    """
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"{value!r} has characters HTTP headers cannot carry") from None
    elif not isinstance(value, bytes):
        value = bytes(value)
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise ValueError(f"{value!r} contains CR, LF or NUL")
    return value


class Headers:
    """Ordered, case-preserving header fields with case-insensitive lookup.

    Args:
        fields: ``(name, value)`` byte pairs, used as they are (not copied),
            or pairs of ``str``, or a mapping; ``None`` for none.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: Iterable | dict | None = None) -> None:
        if fields is None:
            self.fields: list[tuple[bytes, bytes]] = []
        elif type(fields) is list and all(
            type(n) is bytes and type(v) is bytes for n, v in fields
        ):
            self.fields = fields
        else:
            items = fields.items() if hasattr(fields, "items") else fields
            self.fields = [(to_bytes(n), to_bytes(v)) for n, v in items]

    @classmethod
    def wrap(cls, fields: list[tuple[bytes, bytes]]) -> Headers:
        """``fields``, a list of ``(name, value)`` byte pairs, used as they are
        without the constructor's check of every pair's types: for the codecs,
        whose lists are of bytes already (one call per message instead of one
        per field)."""
        headers = cls.__new__(cls)
        headers.fields = fields
        return headers

    # -- reading ------------------------------------------------------------

    def get(self, name: str | bytes, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        value = self.raw(name)
        return default if value is None else value.decode("latin-1")

    def raw(self, name: str | bytes) -> bytes | None:
        """The first value of ``name`` as bytes, or ``None``."""
        key = _key(name)
        for n, v in self.fields:
            if n.lower() == key:
                return v
        return None

    def get_all(self, name: str | bytes) -> list[str]:
        """Every value of ``name``, in order (comma lists are not split)."""
        key = _key(name)
        return [v.decode("latin-1") for n, v in self.fields if n.lower() == key]

    def __getitem__(self, name: str | bytes) -> str:
        value = self.raw(name)
        if value is None:
            raise KeyError(name)
        return value.decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, (str, bytes)) and self.raw(name) is not None

    def __len__(self) -> int:
        return len(self.fields)

    def __iter__(self) -> Iterator[str]:
        """The names, in order, repeated names included."""
        return (n.decode("latin-1") for n, _ in self.fields)

    def items(self) -> list[tuple[str, str]]:
        """``(name, value)`` pairs as ``str``, in order."""
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.fields]

    # -- changing -----------------------------------------------------------

    def __setitem__(self, name: str | bytes, value: str | bytes) -> None:
        """Set ``name`` to one value: the first field is changed in place
        (keeping its position and case), later ones are removed; a new name
        is appended."""
        bname = to_bytes(name)
        bvalue = to_bytes(value)
        key = bname.lower()
        fields = self.fields
        for i, (n, _) in enumerate(fields):
            if n.lower() == key:
                fields[i] = (n, bvalue)
                fields[i + 1 :] = [f for f in fields[i + 1 :] if f[0].lower() != key]
                return
        fields.append((bname, bvalue))

    def add(self, name: str | bytes, value: str | bytes) -> None:
        """Append a field, even if ``name`` is already there."""
        self.fields.append((to_bytes(name), to_bytes(value)))

    def remove(self, name: str | bytes) -> int:
        """Remove every field called ``name``; return how many there were."""
        key = _key(name)
        before = len(self.fields)
        self.fields[:] = [f for f in self.fields if f[0].lower() != key]
        return before - len(self.fields)

    def __delitem__(self, name: str | bytes) -> None:
        if not self.remove(name):
            raise KeyError(name)

    def copy(self) -> Headers:
        """A copy whose changes do not affect this object."""
        return Headers(list(self.fields))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self.fields == other.fields
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


def _key(name: str | bytes) -> bytes:
    if isinstance(name, str):
        try:
            return name.encode("latin-1").lower()
        except UnicodeEncodeError:
            return b"\n"  # no field name can contain LF: matches nothing
    return name.lower()
