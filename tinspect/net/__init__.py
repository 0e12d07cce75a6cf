"""The network legs of a connection: shells, upstream connects, socket options, timers."""
