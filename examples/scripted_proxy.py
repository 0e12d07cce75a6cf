"""A scripted experiment: one proxy, a custom tap, several listeners.

Run it in the gateway of a TPROXY setup (as root):

    python examples/scripted_proxy.py 198.51.100.2

It relays TPROXY-diverted TCP on port 8080 (IPv4 and IPv6), forwards local
port 9000 to SERVER:7 and UDP port 5300 to SERVER:5353, logs every unit, and
prints a byte count for each flow when it closes.
"""

import sys

from tinspect import TO_SERVER, Proxy, Tap
from taps.logger import LoggerTap


class ByteCounter(Tap):
    """Counts payload bytes per flow and direction; prints them at close."""

    def handle(self, unit, flow):
        key = "up" if unit.direction is TO_SERVER else "down"
        counts = flow.state.setdefault("bytes", {"up": 0, "down": 0})
        counts[key] += unit.size
        return unit

    def flow_closed(self, flow):
        counts = flow.state.get("bytes", {"up": 0, "down": 0})
        print(f"flow {flow.id} {flow.transport} up={counts['up']} down={counts['down']}", flush=True)


def main(server: str) -> None:
    proxy = Proxy(taps=[LoggerTap(level="debug"), ByteCounter()])
    proxy.listen("tproxy:8080:interface=\\:\\:")
    proxy.listen(f"forward={server}:7@tcp:9000")
    proxy.listen_udp(f"forward={server}:5353@5300")
    proxy.run(log_to=None)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "198.51.100.2")
