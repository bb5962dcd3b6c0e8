#!/usr/bin/env python3
"""TLS benchmark, now a selection of bench/run.py (one command, one harness):
pgbench -S over TLS straight to PostgreSQL (ssl=on) against pgbench over TLS to
pgwarden --threads 1, which speaks plain or TLS to the server; then pgwarden's
direct-TLS handshakes per CPU-second of its one loop thread.

    bench/tls_bench.py [--seconds 10] [--rounds 3] [--clients 8] [any bench/run.py option]

is bench/run.py --targets direct-tls,pgwarden-tls,pgwarden-tls2 --threads 1
--handshakes 10 followed by the given options (a later option wins).
Targets (clients always use sslmode=require over TCP):
  direct-tls       PostgreSQL itself terminates TLS
  pgwarden-tls     pgwarden terminates TLS, plain to the server
  pgwarden-tls2    the same, TLS to the server too (--upstream-sslmode require)
(run.py adds the plain `direct` run too). A measurement, not a test.
"""

import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("BENCH_PROG", "bench/tls_bench.py")
argv = [sys.executable, os.path.join(here, "run.py"),
        "--targets", "direct-tls,pgwarden-tls,pgwarden-tls2", "--threads", "1", "--handshakes", "10"] + sys.argv[1:]
os.execv(sys.executable, argv)
