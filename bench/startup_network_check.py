#!/usr/bin/env python3
"""Does the gateway touch the network while it starts? strace says.

Starts the mock upstream and `gateway serve --config bench/gateway_bench.yaml` under
``strace -f`` (every thread and child), waits for the first 200 from a chat
completion, stops both, and lists every connect()/sendto()/sendmsg() to an address
that is not loopback (DNS included: a lookup is a UDP send to port 53). Exit status 1
if there was any. Needs strace (Debian: `apt-get install strace`).

    $BENCH_DIR/venv-gateway/bin/python bench/startup_network_check.py
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402

INET = re.compile(r"sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), .*?(?:sin_addr=inet_addr\(\"([^\"]+)\"\)|"
                  r"inet_pton\(AF_INET6, \"([^\"]+)\")")
LOOPBACK = re.compile(r"^(127\.|::1$|::ffff:127\.)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="dir for the strace log (default: a temp dir)")
    ap.add_argument("--control-plane", choices=("mock", "aws"), default="mock",
                    help="where the SageMaker DescribeEndpoint poller goes: the mock (AWS_ENDPOINT_URL_SAGEMAKER, "
                         "default) or AWS's own endpoint, as a deployment without the override would")
    ap.add_argument("--settle-s", type=float, default=2.0, help="keep tracing this long after the first 200")
    a = ap.parse_args()
    if shutil.which("strace") is None:
        print("startup network check: SKIPPED (strace not installed)")
        return 0
    out = a.out or tempfile.mkdtemp(prefix="gw-startup-net-")
    os.makedirs(out, exist_ok=True)
    trace = os.path.join(out, "strace.txt")
    py = sys.executable
    gw_bin = os.path.join(os.path.dirname(py), "gateway")
    mock_port = compare.free_port_from(18500)
    gw_port = compare.free_port_from(mock_port + 1)
    mock_base = "http://127.0.0.1:%d" % mock_port
    env = {k: v for k, v in os.environ.items() if k not in compare.SCRUB_ENV}
    env.update(compare.GATEWAY_ENV)
    env.update({"GATEWAY_API_KEYS": "sk-bench-1234", "BENCH_UPSTREAM": mock_base + "/v1", "BENCH_UPSTREAM_ROOT": mock_base})
    if a.control_plane == "mock":
        env["AWS_ENDPOINT_URL_SAGEMAKER"] = mock_base
    mock = compare.Managed("mock", [py, os.path.join(HERE, "mock_upstream.py"), "--port", str(mock_port)], env, out,
                           os.path.join(out, "mock.log"))
    gw = compare.Managed("gateway", ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", trace,
                                     gw_bin, "serve", "--config", compare.GATEWAY_CONFIG, "--port", str(gw_port)],
                         env, out, os.path.join(out, "gateway.log"))
    try:
        mock.start()
        compare.wait_ready(mock_base, None, "gpt-4o-mini", mock, 15)
        gw.start()
        startup = compare.wait_ready("http://127.0.0.1:%d" % gw_port, "sk-bench-1234", "gpt-4o-mini", gw, 120)
        time.sleep(a.settle_s)  # the first state tick (and its background control-plane poll) runs by then
    finally:
        gw.stop()
        mock.stop()
    outside, inside = [], 0
    with open(trace) as f:
        for line in f:
            m = INET.search(line)
            if not m:
                continue
            addr = m.group(2) or m.group(3)
            if LOOPBACK.match(addr):
                inside += 1
            else:
                outside.append(line.strip())
    print("startup network check (control plane: %s): %d connect/send calls to loopback, %d to other addresses "
          "(first 200 after %.2fs under strace, traced %.0fs more; trace %s)" % (
              a.control_plane, inside, len(outside), startup, a.settle_s, trace))
    for line in outside[:20]:
        print("  " + line)
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
