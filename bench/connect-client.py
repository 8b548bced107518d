#!/usr/bin/env python3
"""The one client of bench/connect.ts: the same program measures every path (direct, runguard, iptables).

    connect-client.py HOST PORT COUNT CONCURRENCY

Each connection: connect, send 1 byte, read the 1-byte echo, close. The latency of one connection is
connect + first-byte round trip (close excluded); the rate counts whole connections, close included.
COUNT connections in total, split over CONCURRENCY loops; with more than one loop each runs in its
own forked process (same cgroup, so the same path) and all start together behind a pipe barrier.
Prints one JSON line: {"count", "concurrency", "elapsed_ns", "errors", "first_error", "lat_ns": [...]}.
"""
import json
import os
import socket
import sys
import time


def loop(addr, n):
    lat = []
    errors = 0
    first_error = None
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect(addr)
            s.sendall(b'x')
            if s.recv(1) != b'x':
                raise OSError('no echo')
            lat.append(clock() - t0)
        except OSError as err:
            errors += 1
            if first_error is None:
                first_error = str(err)
        finally:
            s.close()
    return lat, errors, first_error


def main():
    host, port, count, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    addr = (host, port)
    if conc <= 1:
        t0 = time.perf_counter_ns()
        lat, errors, first_error = loop(addr, count)
        elapsed = time.perf_counter_ns() - t0
    else:
        shares = [count // conc + (1 if i < count % conc else 0) for i in range(conc)]
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        workers = []
        for share in shares:
            out_r, out_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(out_r)
                os.write(ready_w, b'.')
                os.read(go_r, 1)
                res = loop(addr, share)
                # CLOCK_MONOTONIC is system-wide, so the parent can compare this with its start time.
                done = time.perf_counter_ns()
                data = json.dumps([done, res[0], res[1], res[2]]).encode()
                while data:
                    data = data[os.write(out_w, data):]
                os._exit(0)
            os.close(out_w)
            workers.append((pid, out_r))
        got = 0
        while got < conc:
            got += len(os.read(ready_r, conc - got))
        t0 = time.perf_counter_ns()
        os.write(go_w, b'.' * conc)
        lat, errors, first_error, end = [], 0, None, t0
        for pid, out_r in workers:
            chunks = []
            while True:
                b = os.read(out_r, 65536)
                if not b:
                    break
                chunks.append(b)
            os.close(out_r)
            os.waitpid(pid, 0)
            done, wlat, werr, wfirst = json.loads(b''.join(chunks))
            end = max(end, done)
            lat.extend(wlat)
            errors += werr
            first_error = first_error or wfirst
        elapsed = end - t0
    print(json.dumps({'count': count, 'concurrency': conc, 'elapsed_ns': elapsed, 'errors': errors,
                      'first_error': first_error, 'lat_ns': lat}))


if __name__ == '__main__':
    main()
