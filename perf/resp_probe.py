#!/usr/bin/env python3
"""Latency probes for perf/durability-compare.sh (a minimal RESP client, no dependencies).

  resp_probe.py waitaof PORT N      SET then WAITAOF 1 0 0, N times: WAITAOF latency p50/p99 (us)
  resp_probe.py fsync DIR N         bare 4 KiB append + fdatasync in DIR, N times: p50/p99 (us)
  resp_probe.py pause PORT SECONDS  GETs back to back for SECONDS: p50/p99.9/max latency (us)
  resp_probe.py replwait PORT N wait|waitaof TIMEOUT_MS
                                    SET then WAIT 1 TIMEOUT_MS (or WAITAOF 1 1 TIMEOUT_MS), N
                                    times: p50/p99 (us) and how many replies missed the replica

Each prints one line: "<p50> <p99 or p99.9> [max] <count>".
"""

import os
import socket
import sys
import time


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))
        return self.read()

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise RuntimeError("unexpected reply %r" % line)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def us(seconds):
    return int(seconds * 1_000_000)


def waitaof(port, n):
    c = Client(port)
    lat = []
    for i in range(n):
        c.call("SET", "probe:%d" % (i % 100), "x" * 16)
        t = time.perf_counter()
        reply = c.call("WAITAOF", 1, 0, 0)
        lat.append(time.perf_counter() - t)
        if reply[0] != b"1":
            raise RuntimeError("WAITAOF did not acknowledge: %r" % reply)
    print(us(percentile(lat, 0.5)), us(percentile(lat, 0.99)), n)


def replwait(port, n, kind, timeout_ms):
    c = Client(port)
    lat = []
    missed = 0
    for i in range(n):
        c.call("SET", "probe:%d" % (i % 100), "x" * 16)
        t = time.perf_counter()
        if kind == "wait":
            acked = c.call("WAIT", 1, timeout_ms)
        else:
            acked = c.call("WAITAOF", 1, 1, timeout_ms)[1]
        lat.append(time.perf_counter() - t)
        if acked != b"1":
            missed += 1
    print(us(percentile(lat, 0.5)), us(percentile(lat, 0.99)), n, missed)


def fsync(directory, n):
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    block = b"x" * 4096
    lat = []
    try:
        for _ in range(n):
            os.write(fd, block)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    print(us(percentile(lat, 0.5)), us(percentile(lat, 0.99)), n)


def pause(port, seconds):
    c = Client(port)
    lat = []
    end = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        if t >= end:
            break
        c.call("GET", "key:000000000001")
        lat.append(time.perf_counter() - t)
    print(
        us(percentile(lat, 0.5)),
        us(percentile(lat, 0.999)),
        us(max(lat)),
        len(lat),
    )


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "waitaof":
        waitaof(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "fsync":
        fsync(sys.argv[2], int(sys.argv[3]))
    elif mode == "replwait":
        replwait(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    elif mode == "pause":
        pause(int(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit(__doc__)
