"""The toolkit for writing taps: option helpers, filter rules, HAR, SIGHUP.

A tap imports the contract from `tinspect` (`Tap`, `Flow`, the units,
`Headers`, ...) and the helpers it may need from here, as the built-in taps
in ``taps/`` do::

    from tinspect import Request, Tap
    from tinspect.taplib import directions, flag, on_sighup

* `flag` and `directions` read a tap's yes/no and ``direction`` options
  (`tinspect.taplib.loader`, which also finds and builds taps by name);
* `Rules` parses a filter rules file into `Decision` objects whose action is
  `ALLOW`, `BLOCK` or `PASSTHROUGH`; `RulesError` says what is wrong with one
  (`tinspect.taplib.filtering`, sans-IO);
* `encode_body` stores a body in a recording and `convert` turns the
  recorder's JSON Lines into HAR 1.2 (`tinspect.taplib.har`);
* `JsonLinesLog` appends records to a JSON Lines file of its own, rotated
  by size and reopened on SIGHUP (`tinspect.taplib.jsonlog`);
* `cacheable`, `cache_key`, `CACHE_PATTERNS`, `CACHE_EXCLUDE` and `CACHE_KEY`
  say which URLs a cache keeps and under which key: a digest the URL names,
  or the URL (`tinspect.taplib.cachekeys`, sans-IO);
* `follow_redirect`, `Redirect`, `REDIRECT_STATUSES` and `MAX_REDIRECTS` say which redirects
  a cache follows itself, and where to (`tinspect.taplib.redirects`, sans-IO);
* `CacheServer`, `KEY_HEADER` and `poll`: a cache tap's own HTTP server on
  loopback, which serves its entries from disk, and waiting on another
  worker's fetch (`tinspect.taplib.cacheserver`, Twisted: imported on first
  use, so that importing this package does not cost ``twisted.web``);
* `on_sighup` registers a callback to reload something on ``kill -HUP``
  (`tinspect.ops.signals`).

Nothing else under ``tinspect`` is promised to stay where it is. Importing
this package costs a few standard modules (``shlex``), never the layers;
``import tinspect`` does not import it.
"""

from importlib import import_module
from typing import Any

from tinspect.ops.signals import on_sighup
from tinspect.taplib.cachekeys import CACHE_EXCLUDE, CACHE_KEY, CACHE_PATTERNS, cache_key, cacheable
from tinspect.taplib.filtering import ALLOW, BLOCK, PASSTHROUGH, Decision, Rules, RulesError
from tinspect.taplib.har import convert, encode_body
from tinspect.taplib.jsonlog import JsonLinesLog
from tinspect.taplib.loader import directions, flag
from tinspect.taplib.redirects import MAX_REDIRECTS, REDIRECT_STATUSES, Redirect, follow_redirect

__all__ = [
    "flag",
    "directions",
    "Rules",
    "RulesError",
    "Decision",
    "ALLOW",
    "BLOCK",
    "PASSTHROUGH",
    "convert",
    "encode_body",
    "JsonLinesLog",
    "on_sighup",
    "cacheable",
    "cache_key",
    "CACHE_PATTERNS",
    "CACHE_EXCLUDE",
    "CACHE_KEY",
    "follow_redirect",
    "Redirect",
    "REDIRECT_STATUSES",
    "MAX_REDIRECTS",
    "CacheServer",
    "KEY_HEADER",
    "poll",
]

_ON_FIRST_USE = {"CacheServer": "tinspect.taplib.cacheserver", "KEY_HEADER": "tinspect.taplib.cacheserver",
                 "poll": "tinspect.taplib.cacheserver"}


def __getattr__(name: str) -> Any:
    """The names of `_ON_FIRST_USE`, imported when a tap first asks for one (PEP 562)."""
    if name in _ON_FIRST_USE:
        return getattr(import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
