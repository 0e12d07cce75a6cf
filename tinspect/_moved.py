"""The module paths of tinspect 0.1, before it had subpackages: each still imports.

``import tinspect.http1`` gives the very module ``tinspect.layers.http.http1.parse``
(one object under two names, so patching either patches both). A user's lab
script or tap written against the old flat layout keeps working; new code uses
the new paths. `install` puts the finder on ``sys.meta_path`` once, from
``tinspect/__init__.py``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

__all__ = ["MOVED", "install"]

MOVED = {
    "tinspect.ca": "tinspect.layers.tls.ca",
    "tinspect.clienthello": "tinspect.layers.tls.clienthello",
    "tinspect.config": "tinspect.cli.config",
    "tinspect.connection": "tinspect.listen.accept",
    "tinspect.endpoints": "tinspect.listen.endpoints",
    "tinspect.explicit": "tinspect.layers.http.explicit",
    "tinspect.filtering": "tinspect.taplib.filtering",
    "tinspect.h2_conn": "tinspect.layers.http.h2.conn",
    "tinspect.h2_fields": "tinspect.layers.http.h2.fields",
    "tinspect.h2_layer": "tinspect.layers.http.h2.layer",
    "tinspect.h2_upstream": "tinspect.layers.http.h2.upstream",
    "tinspect.har": "tinspect.taplib.har",
    "tinspect.http1": "tinspect.layers.http.http1.parse",
    "tinspect.http1_layer": "tinspect.layers.http.http1.layer",
    "tinspect.http1_upstream": "tinspect.layers.http.http1.upstream",
    "tinspect.http1_write": "tinspect.layers.http.http1.write",
    "tinspect.logs": "tinspect.ops.logs",
    "tinspect.metrics": "tinspect.ops.metrics",
    "tinspect.metrics_http": "tinspect.ops.metrics_http",
    "tinspect.netlab": "tinspect.lab.netlab",
    "tinspect.relay": "tinspect.layers.raw",
    "tinspect.shells": "tinspect.net.shells",
    "tinspect.signals": "tinspect.ops.signals",
    "tinspect.sniff": "tinspect.layers.sniff",
    "tinspect.sockets": "tinspect.net.sockets",
    "tinspect.taploader": "tinspect.taplib.loader",
    "tinspect.timeouts": "tinspect.net.timeouts",
    "tinspect.tls": "tinspect.layers.tls.handshake",
    "tinspect.tls_layer": "tinspect.layers.tls.layer",
    "tinspect.tls_policy": "tinspect.layers.tls.policy",
    "tinspect.udp": "tinspect.layers.udp",
    "tinspect.upstream": "tinspect.net.upstream",
    "tinspect.websocket": "tinspect.layers.websocket",
    "tinspect.workers": "tinspect.listen.workers",
}
"""Old module path -> the module it is now. (``tinspect.cli``, ``tinspect.lab`` and
``tinspect.listen`` became packages that re-export what the old modules had.)"""


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module that lives at the new one."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system has just set the alias's spec on the real module: give it back its own.
        module.__spec__ = self._specs.pop(module.__name__)


def install() -> None:
    """Let the old paths import (once per process)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
