"""twistd plugin for tinspect, and the ``tproxy:`` endpoint parser.

No ``__init__.py`` lives in ``twisted/`` or ``twisted/plugins/``: this
directory merges into Twisted's own plugin package (Twisted's convention).
"""

from twisted.application.service import ServiceMaker

from tinspect.listen.endpoints import SharedTCPServerParser, TProxyServerParser

tinspectServiceMaker = ServiceMaker(
    "tinspect",
    "tinspect.service",
    "Transparent HTTP(S)/h2/WebSocket inspection proxy",
    "tinspect",
)

tproxyServerParser = TProxyServerParser()
sharedServerParser = SharedTCPServerParser()
