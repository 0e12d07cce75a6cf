"""QUIC: reading the server name from a connection's Initial packets (phase 1; HTTP/3 later)."""
