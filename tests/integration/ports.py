"""Ranges of free loopback ports, for the integration tests and bench.py
(standard library only: the bench runs without pytest)."""
import random
import socket


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_range(n):
    """n consecutive loopback ports nobody listens on now, as (first, last).

    Drawn at random from below the kernel's ephemeral range, so the client
    sides of earlier tests' connections (thousands of them in TIME_WAIT
    after a load test) never sit in it; probed the way the instances bind
    (SO_REUSEADDR, then listen), so a TIME_WAIT port counts as free."""
    hi = min(_ephemeral_low(), 65000) - n
    lo = 10000 if hi > 12000 else 1024
    for _ in range(200):
        base = random.randint(lo, hi)
        ok = True
        for p in range(base, base + n):
            s = socket.socket()
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                s.listen(1)
            except OSError:
                ok = False
            finally:
                s.close()
            if not ok:
                break
        if ok:
            return base, base + n - 1
    raise RuntimeError("no range of %d free ports in %d-%d" % (n, lo, hi + n))
