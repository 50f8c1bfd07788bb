"""The supervisor's listening sockets: one per worker on one port, connections spread over all
of them, and a port in use still refused (service.supervisor.bind)."""

from __future__ import annotations

import socket

import pytest

from service.supervisor import bind

CONNECTIONS = 64  # all on one socket by chance: 2 ** -63


def test_every_worker_socket_gets_connections_and_a_taken_port_is_refused() -> None:
    sockets = bind("127.0.0.1", 0, 2)
    clients: list[socket.socket] = []
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(sockets) == 2 and len(ports) == 1
        port = ports.pop()
        for sock in sockets:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.get_inheritable()
        with pytest.raises(OSError):
            bind("127.0.0.1", port, 1)  # a second server on this port fails, joins nothing
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        accepted = []
        for sock in sockets:
            sock.setblocking(False)
            count = 0
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
            accepted.append(count)
        assert sum(accepted) == CONNECTIONS
        assert min(accepted) > 0, f"the kernel gave every connection to one worker: {accepted}"
    finally:
        for s in [*clients, *sockets]:
            s.close()
