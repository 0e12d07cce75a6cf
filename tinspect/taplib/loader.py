"""Finding taps by name and building them with their options.

A tap name on the command line is one of:

* a built-in name (``logger``, ``mangler``; see `taps.BUILTIN`);
* a name registered by an installed package in the ``tinspect.taps``
  entry-point group (``[project.entry-points."tinspect.taps"]``);
* ``module:Class`` (``mypkg.mytaps:Redact``);
* any of those behind an alias, ``ALIAS=NAME`` (``redact=mypkg.mytaps:Redact``).

Options (``--tap-option NAME.KEY=VALUE``) are keyed by the alias, the
built-in or entry-point name, or for ``module:Class`` the class name in lower
case. They are passed to the tap's constructor as keyword arguments; from the
command line every value is a string and the tap converts it. Unknown names,
unknown options and constructors that reject a value all raise `TapLoadError`
naming the tap, so a typo fails at start, not at the first packet.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from taps import BUILTIN
from tinspect.chain import Tap
from tinspect.units import Direction

__all__ = ["TapLoadError", "TapRef", "parse_tap_names", "resolve", "build_taps", "flag", "directions"]

ENTRY_POINT_GROUP = "tinspect.taps"


class TapLoadError(ValueError):
    """A tap cannot be found or built; the message names it."""


class TapRef:
    """One ``--taps`` entry: the key its options use and where the class is.

    Attributes:
        key: the name options are keyed by.
        target: a built-in/entry-point name or ``module:Class``.
    """

    __slots__ = ("key", "target")

    def __init__(self, key: str, target: str) -> None:
        self.key = key
        self.target = target

    def __repr__(self) -> str:
        return f"TapRef({self.key!r}, {self.target!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TapRef) and (self.key, self.target) == (other.key, other.target)


def parse_tap_names(text: str) -> list[TapRef]:
    """Split ``logger,redact=mypkg.mod:Redact`` into `TapRef` objects."""
    refs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        alias, sep, target = item.partition("=")
        if sep:
            refs.append(TapRef(alias.strip(), target.strip()))
        elif ":" in item:
            refs.append(TapRef(item.rpartition(":")[2].lower(), item))
        else:
            refs.append(TapRef(item, item))
    return refs


def resolve(target: str) -> type[Tap]:
    """The tap class for a name or ``module:Class``.

    Raises:
        TapLoadError: not found, or not a `Tap` subclass.
    """
    spec = BUILTIN.get(target)
    if spec is None and ":" not in target:
        found = entry_points(group=ENTRY_POINT_GROUP, name=target)
        if found:
            try:
                cls = next(iter(found)).load()
            except Exception as e:
                raise TapLoadError(f"tap {target!r}: its package failed to load: {e}") from e
            return _check(target, cls)
        known = sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
        raise TapLoadError(f"unknown tap {target!r} (known: {', '.join(known)}; or use module:Class)")
    module_name, _, attr = (spec or target).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TapLoadError(f"tap {target!r}: cannot import {module_name!r}: {e}") from e
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise TapLoadError(f"tap {target!r}: {module_name!r} has no {attr!r}") from None
    return _check(target, cls)


def _check(target: str, cls: Any) -> type[Tap]:
    if not (inspect.isclass(cls) and issubclass(cls, Tap)):
        raise TapLoadError(f"tap {target!r}: {cls!r} is not a tinspect.Tap subclass")
    return cls


def build_taps(refs: list[TapRef], options: dict[str, dict[str, Any]]) -> list[Tap]:
    """Instantiate taps in chain order with their options.

    Args:
        refs: from `parse_tap_names`.
        options: ``{key: {option: value}}``.

    Raises:
        TapLoadError: a tap is unknown, an option is unknown or refused, or
            options were given for a tap that is not in the chain.
    """
    keys = {ref.key for ref in refs}
    stray = sorted(set(options) - keys)
    if stray:
        raise TapLoadError(f"options given for {', '.join(stray)}, which is not in --taps")
    taps = []
    for ref in refs:
        cls = resolve(ref.target)
        kwargs = options.get(ref.key, {})
        _check_options(ref.key, cls, kwargs)
        try:
            tap = cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise TapLoadError(f"tap {ref.key!r}: {e}") from e
        if tap.name is None:
            tap.name = ref.key
        taps.append(tap)
    return taps


_FLAGS = {"yes": True, "true": True, "1": True, "on": True, "no": False, "false": False, "0": False, "off": False}


def flag(name: str, value: str | bool) -> bool:
    """A tap's yes/no option (``yes``, ``no``, ``true``, ``false``, ``on``, ``off``, ``1``, ``0``).

    Raises:
        ValueError: anything else, naming the option.
    """
    if isinstance(value, bool):
        return value
    try:
        return _FLAGS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"{name} must be yes or no, not {value!r}") from None


def directions(value: str) -> frozenset[Direction]:
    """A tap's ``direction`` option: ``both``, ``to_server`` or ``to_client``.

    Raises:
        ValueError: anything else.
    """
    if value == "both":
        return frozenset(Direction)
    try:
        return frozenset([Direction(value)])
    except ValueError:
        raise ValueError(f"direction must be both, to_server or to_client, not {value!r}") from None


def _check_options(key: str, cls: type[Tap], kwargs: dict[str, Any]) -> None:
    lists = getattr(cls, "list_options", frozenset())  # taps need not subclass Tap
    repeated = sorted(k for k, v in kwargs.items() if isinstance(v, list) and k not in lists)
    if repeated:
        raise TapLoadError(f"tap {key!r}: option {', '.join(repeated)} takes one value, not several")
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TapLoadError(
            f"tap {key!r}: unknown option {', '.join(unknown)} (known: {', '.join(known) or 'none'})"
        )
