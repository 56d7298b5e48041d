import socket

import httpx
import pytest

from tests.fixtures.network_guard import NonLoopbackConnectionError


def test_guard_refuses_outside_hosts():
    with pytest.raises(NonLoopbackConnectionError):
        socket.create_connection(("93.184.216.34", 443), timeout=1)
    with pytest.raises(NonLoopbackConnectionError):
        httpx.get("https://api.stripe.com/v1/customers", timeout=1)


def test_guard_allows_loopback():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname(), timeout=1):
            pass
