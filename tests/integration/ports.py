"""Loopback TCP ports for the servers the tests and the benchmark start.

A port from bind(0) comes from the kernel's ephemeral range, which outgoing
connections also draw from, and two calls may return the same port once the
first socket is closed: a test that asked for a listen port and a metrics
port once got one port for both. Ports are therefore drawn at random below
the ephemeral range, each checked free, and never handed out twice by one
process. Where that range leaves fewer than 1,000 ports below it, the kernel
picks (bind to port 0), still checked against the ports handed out.
"""

import random
import socket

_handed_out = set()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port():
    """A loopback port nothing listens on, not handed out before by this process."""
    high = min(_ephemeral_low(), 65536) - 1
    low = 20000 if high > 24000 else 1024
    kernel_picks = high - low < 1000
    for _ in range(1000):
        if kernel_picks:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        else:
            port = random.randint(low, high)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port")
