"""Small network peers for end-to-end tests, run inside lab namespaces.

    python -m tests.peers udp-echo PORT            echo datagrams (IPv4 and IPv6)
    python -m tests.peers udp-ask HOST PORT MSG... send each MSG, print each reply
    python -m tests.peers slow-read HOST PORT RATE read at RATE bytes/s, print "<sha256> <count>"
    python -m tests.peers reset-server PORT        send "partial", then reset (RST) each connection

The UDP asker uses a connected socket, so the kernel drops any reply that does
not come from HOST:PORT: a printed reply proves the source address was right.
"""

import hashlib
import socket
import sys
import time


def udp_echo(port: int) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    while True:
        data, addr = sock.recvfrom(65535)
        sock.sendto(b"echo:" + data, addr)


def udp_ask(host: str, port: int, messages: list[str]) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect((host, port))
    for message in messages:
        sock.send(message.encode())
        print(sock.recv(65535).decode(), flush=True)


def slow_read(host: str, port: int, rate: int) -> None:
    sock = socket.create_connection((host, port), timeout=30)
    digest = hashlib.sha256()
    count = 0
    started = time.monotonic()
    while True:
        data = sock.recv(65536)
        if not data:
            break
        digest.update(data)
        count += len(data)
        ahead = count / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    print(digest.hexdigest(), count)


def reset_server(port: int) -> None:
    import struct

    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.listen()
    while True:
        conn, _ = sock.accept()
        conn.sendall(b"partial")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "udp-echo":
        udp_echo(int(args[0]))
    elif cmd == "udp-ask":
        udp_ask(args[0], int(args[1]), args[2:])
    elif cmd == "slow-read":
        slow_read(args[0], int(args[1]), int(args[2]))
    elif cmd == "reset-server":
        reset_server(int(args[0]))
    else:
        sys.exit(f"unknown peer {cmd}")
