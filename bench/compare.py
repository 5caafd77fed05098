#!/usr/bin/env python3
"""Direct-vs-gateway benchmark driver (stdlib only; run it with the bench venv's python).

Starts mock_upstream.py, then for each repetition walks every target in a rotated
order (so drift is spread evenly): start it if we manage it, wait until a real
chat completion returns 200 (= startup time), let it settle, read idle RSS,
run load.py for each (mode, concurrency) cell, read CPU time and RSS, stop it.
At the end prints medians over repetitions and the latency ADDED versus calling
the mock directly (median of per-repetition paired differences).

Targets
  direct                         always measured: the mock itself
  --litellm default,key,lean     LiteLLM proxy presets (configs in litellm/)
  --ours                         this gateway: `gateway serve --config bench/gateway_bench.yaml`
                                 (one worker, pinned like LiteLLM; binary from --gateway-venv)
  --ours-workers N               this gateway again with N workers and shared state in Redis
                                 (--redis-url); reports Redis commands per request
  --target NAME=URL              an already-running gateway (not started/stopped)
  --target-cmd 'NAME=CMD'        a gateway we start/stop each repetition; CMD is a
                                 shell command with {port}, {upstream} (=.../v1)
                                 and {upstream_root} placeholders, e.g.
      --target-cmd 'ours=/path/venv/bin/uvicorn ourgw.app:app --host 127.0.0.1 --port {port}'
    (pass the upstream URL to it via its own config/env; $BENCH_UPSTREAM is set too)

CPU placement (2-core box): managed gateways are pinned with taskset to
--proxy-cpus (default 0); the mock and the load generator to --client-cpus
(default 1).  --no-pin disables pinning.

Everything listens on / talks to 127.0.0.1 only.  Every load cell is bounded by
request count and --cell-max-seconds; the whole run by --max-total-minutes.
"""
import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH_DIR = os.environ.get("BENCH_DIR", os.path.join(tempfile.gettempdir(), "gateway-bench"))
DEFAULT_LITELLM_VENV = os.environ.get("LITELLM_VENV", os.path.join(BENCH_DIR, "venv-litellm"))
DEFAULT_GATEWAY_VENV = os.environ.get("GATEWAY_VENV", os.path.join(BENCH_DIR, "venv-gateway"))
GATEWAY_CONFIG = os.path.join(HERE, "gateway_bench.yaml")
# What a production deployment has in its environment, minus the secrets: dummy AWS
# credentials (the SageMaker backend builds its SigV4 signer from the standard chain at
# start-up) and no instance-metadata lookups (which would be a network call).
GATEWAY_ENV = {"AWS_ACCESS_KEY_ID": "AKIDBENCH", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true", "BENCH_UPSTREAM_KEY": "sk-mock"}

BENCH_ADMIN_KEY = "adm-bench-1234"


def redis_answers(url: str) -> bool:
    """Does a Redis server on loopback answer PING at ``url``? (The bench writes keys there.)"""
    u = urllib.parse.urlsplit(url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        return False
    try:
        return RedisStats(url)._cmd("PING").startswith(b"+PONG")
    except OSError:
        return False


def create_virtual_key(url: str, fields: dict) -> str:
    """POST /admin/keys on a started gateway; the secret it answers is the target's api key.

    The alias gets a fresh suffix: keys live in Redis, and the next rep's gateway would find the
    last one's alias taken (409)."""
    fields = dict(fields, alias="%s-%s" % (fields["alias"], os.urandom(4).hex()))
    req = urllib.request.Request(url + "/admin/keys", data=json.dumps(fields).encode(), method="POST",
                                 headers={"authorization": "Bearer " + BENCH_ADMIN_KEY,
                                          "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["key"]


LITELLM_PRESETS = {
    # name: (config file, extra env)
    "default": ("litellm_default.yaml", {}),
    "key": ("litellm_key.yaml", {}),
    "lean": ("litellm_lean.yaml", {"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION", "LITELLM_TELEMETRY_DISABLED": "true"}),
    "lean-granian": ("litellm_lean.yaml", {"LITELLM_LOG": "ERROR", "LITELLM_MODE": "PRODUCTION", "LITELLM_TELEMETRY_DISABLED": "true"}),
}
# env that must never leak into a benchmarked gateway (would add DB/cache work)
SCRUB_ENV = ["DATABASE_URL", "REDIS_HOST", "REDIS_URL", "REDIS_PORT", "LITELLM_MASTER_KEY", "STORE_MODEL_IN_DB",
             "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "GATEWAY_CONFIG",
             "GATEWAY_API_KEYS", "PROMETHEUS_MULTIPROC_DIR", "AWS_PROFILE", "AWS_SESSION_TOKEN",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes
def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def proc_tree(pid):
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def tree_rss_kb(pid):
    tot = 0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        tot += int(line.split()[1])
        except OSError:
            pass
    return tot


def tree_cpu_s(pid):
    tck = os.sysconf("SC_CLK_TCK")
    tot = 0
    for p in proc_tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            tot += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return tot / tck


def worker_cpu_s(pid):
    """CPU seconds of each leaf process of the tree (the server's worker processes), by pid."""
    tck = os.sysconf("SC_CLK_TCK")
    kids = _children_map()
    out = {}
    for p in proc_tree(pid):
        if kids.get(p):
            continue
        try:
            with open("/proc/%d/cmdline" % p, "rb") as f:
                if b"resource_tracker" in f.read():  # multiprocessing's helper, not a worker
                    continue
            with open("/proc/%d/stat" % p) as f:
                s = f.read()
            fields = s[s.rindex(")") + 2:].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tck
        except (OSError, ValueError, IndexError):
            pass
    return out


def parse_cpus(spec):
    out = set()
    for part in str(spec).split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def cpu_busy_s(cpus):
    """Seconds the given CPUs ran tasks (or were stolen by the hypervisor) since boot, from /proc/stat."""
    tck = os.sysconf("SC_CLK_TCK")
    busy = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    if int(name[3:]) in cpus:
                        v = [int(x) for x in vals]
                        # user + nice + system + steal: tasks (and the hypervisor) competing for the
                        # CPU; irq/softirq (the loopback network stack, partly the gateway's own
                        # traffic) are left out
                        busy += v[0] + v[1] + v[2] + (v[7] if len(v) > 7 else 0)
    except (OSError, ValueError, IndexError):
        return None
    return busy / tck


def machine_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_gb = int(f.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        mem_gb = 0
    u = os.uname()
    return {"cpu": model, "nproc": os.cpu_count(), "mem_gb": round(mem_gb, 1), "kernel": u.release,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port_from(port):
    """The first free port at or above ``port`` (targets are started one at a time later)."""
    while not port_free(port):
        port += 1
    return port


class Managed:
    """A process (group) this driver started; stopped only via its own pid/pgid."""

    def __init__(self, name, argv, env, cwd, log_path):
        self.name, self.argv, self.env, self.cwd, self.log_path = name, argv, env, cwd, log_path
        self.p = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.logf.write(("\n==== %s start %s\n%s\n" % (self.name, time.ctime(), " ".join(map(shlex.quote, self.argv)))).encode())
        self.logf.flush()
        self.p = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self.logf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        return self.p.pid

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def stop(self, grace=15.0):
        if self.p is None:
            return
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)  # the group we created with start_new_session
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        self.logf.close()
        self.p = None


# ---------------------------------------------------------------- http helpers
def http_json(url, body=None, key=None, timeout=5.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_ready(base, key, model, proc, timeout):
    """Time until POST {base}/v1/chat/completions answers 200."""
    t0 = time.monotonic()
    body = {"model": model, "messages": [{"role": "user", "content": "ready?"}], "max_tokens": 5}
    last = ""
    while time.monotonic() - t0 < timeout:
        if proc is not None and not proc.alive():
            raise RuntimeError("process exited during startup (rc=%s); see its log" % proc.p.returncode)
        try:
            st, _ = http_json(base + "/v1/chat/completions", body, key, timeout=5)
            if st == 200:
                return time.monotonic() - t0
        except urllib.error.HTTPError as e:
            last = "HTTP %d %s" % (e.code, e.read()[:200])
        except (OSError, urllib.error.URLError) as e:
            last = repr(e)
        time.sleep(0.05)
    raise RuntimeError("not ready after %.0fs: %s" % (timeout, last))


def mock_stats(mock_base):
    try:
        return json.loads(http_json(mock_base + "/mock/stats")[1])
    except Exception:
        return {}


def overhead_buckets(base):
    """Cumulative counts of this gateway's own `gateway_overhead_seconds` histogram, by `le`, all labels summed."""
    try:
        _, body = http_json(base + "/metrics", timeout=5)
    except Exception:  # noqa: BLE001 — a target without it just gets no such note
        return None
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("gateway_overhead_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = out.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return out or None


def overhead_quantiles(b0, b1, qs=(0.5, 0.99)):
    """Upper bounds (ms) of the quantiles of the observations between two readings."""
    if not b0 or not b1:
        return None
    les = sorted(b1, key=lambda k: float("inf") if k == "+Inf" else float(k))
    diff = [(le, b1[le] - b0.get(le, 0.0)) for le in les]
    total = diff[-1][1]
    if total <= 0:
        return None
    out = []
    for q in qs:
        le = next(le for le, n in diff if n >= q * total)
        out.append(float("inf") if le == "+Inf" else round(float(le) * 1000, 3))
    return out


class RedisStats:
    """Total commands processed by a Redis server (INFO stats), over a plain socket (stdlib only)."""

    def __init__(self, url):
        from urllib.parse import urlsplit

        u = urlsplit(url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--redis-url must be on loopback, got %s" % url)
        self.addr = (u.hostname, u.port or 6379)

    def _cmd(self, *args):
        payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args))
        with socket.create_connection(self.addr, timeout=2) as s:
            s.sendall(payload)
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if buf[:1] in (b"+", b"-", b":") and buf.endswith(b"\r\n"):
                    break
                if buf[:1] == b"$":
                    head, _, rest = buf.partition(b"\r\n")
                    if int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2:
                        break
                if buf[:1] == b"*":  # SCAN reply: parsed loosely below
                    try:
                        if self._parse_array(buf) is not None:
                            break
                    except (ValueError, IndexError):
                        pass
        return buf

    @staticmethod
    def _parse_array(buf):
        """[cursor, [keys...]] of a SCAN reply, or None if incomplete."""
        lines = buf.split(b"\r\n")
        if len(lines) < 4:
            return None
        i = 1
        cursor = lines[i + 1]
        i += 2
        n = int(lines[i][1:])
        i += 1
        keys = []
        for _ in range(n):
            if i + 1 >= len(lines):
                return None
            keys.append(lines[i + 1])
            i += 2
        if len(lines) <= i:
            return None
        return cursor, keys

    def monitor(self, tag):
        """Start counting the commands clients send that name a key under ``tag`` (MONITOR).

        Returns a function that stops and returns the count. Commands run inside Lua
        scripts are not counted (the script call itself is); pipelined commands count
        one each, so this is an upper bound on round trips.
        """
        import threading

        sock = socket.create_connection(self.addr, timeout=2)
        sock.sendall(b"MONITOR\r\n")
        sock.settimeout(None)
        needle = tag.encode()
        state = {"n": 0, "buf": b""}

        def reader():
            buf = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\r\n")
                for line in lines:
                    if needle in line and b" lua]" not in line:
                        state["n"] += 1

        th = threading.Thread(target=reader, daemon=True)
        th.start()

        def stop():
            time.sleep(0.05)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            th.join(2)
            return state["n"]

        return stop

    def total_commands(self):
        text = self._cmd("INFO", "stats").decode("latin-1")
        for line in text.split("\r\n"):
            if line.startswith("total_commands_processed:"):
                return int(line.split(":", 1)[1])
        return None

    def delete_prefix(self, tag):
        """Delete the keys a benchmark run wrote (every key of the store starts with its hash tag)."""
        cursor, deleted = b"0", 0
        while True:
            parsed = self._parse_array(self._cmd("SCAN", cursor.decode(), "MATCH", tag + "*", "COUNT", "1000"))
            if parsed is None:
                break
            cursor, keys = parsed
            for k in keys:
                self._cmd("DEL", k.decode())
                deleted += 1
            if cursor == b"0":
                break
        return deleted


# ---------------------------------------------------------------- main
MODES = ("nonstream", "stream", "responses", "responses_stream")


def _cells(args):
    """(mode, concurrency, requests) for every cell the arguments ask for (older runs: chat only)."""
    cells = []
    for mode in MODES:
        spec = args.get(mode, "")
        if spec:
            cells += [(mode, c, n) for c, n in parse_cells(spec)]
    return cells


def parse_cells(spec):
    out = []
    for part in spec.split(","):
        c, n = part.split(":")
        out.append((int(c), int(n)))
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "-" if x is None else ("%.*f" % (nd, x))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--litellm", default="default,key,lean", help="LiteLLM presets to run (comma list, '' for none): " + ",".join(LITELLM_PRESETS))
    ap.add_argument("--litellm-venv", default=DEFAULT_LITELLM_VENV)
    ap.add_argument("--ours", action="store_true", help="benchmark this gateway (one worker, bench/gateway_bench.yaml)")
    ap.add_argument("--ours-workers", type=int, action="append", default=[],
                    help="also benchmark this gateway with N workers and Redis state (repeatable)")
    ap.add_argument("--ours-key", action="store_true",
                    help="also ours-w1-redis-key: 1 worker on Redis, every request on a virtual key with a budget and rpm")
    ap.add_argument("--ours-workers-cpus", default=None,
                    help="CPUs for the multi-worker gateway (default: all; it then shares a core with the client)")
    ap.add_argument("--gateway-venv", default=DEFAULT_GATEWAY_VENV, help="venv with this gateway installed")
    ap.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                    help="Redis for --ours-workers (loopback only); keys go under a per-run prefix, deleted at the end")
    ap.add_argument("--target", action="append", default=[], help="NAME=URL of an already-running gateway")
    ap.add_argument("--target-cmd", action="append", default=[], help="NAME=shell command to start a gateway ({port},{upstream})")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nonstream", default="1:400,16:1500,64:2000", help="concurrency:requests cells for non-streaming")
    ap.add_argument("--stream", default="1:200,16:600,64:1000", help="concurrency:requests cells for streaming ('' = skip)")
    ap.add_argument("--responses", default="1:400,16:1500",
                    help="cells for POST /v1/responses, non-streaming ('' = skip; not run against LiteLLM)")
    ap.add_argument("--responses-stream", default="16:600", help="cells for POST /v1/responses streamed ('' = skip)")
    ap.add_argument("--direct-mult", type=int, default=5, help="request-count multiplier for the (very fast) direct baseline")
    ap.add_argument("--quick", action="store_true", help="1 rep, small cells (smoke check, ~1/5 of the time)")
    ap.add_argument("--api-key", default="sk-bench-1234", help="sent as Bearer to every target (LiteLLM presets use this master_key)")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--prompt-words", type=int, default=20)
    ap.add_argument("--mock-port", type=int, default=18000)
    ap.add_argument("--base-port", type=int, default=4000)
    ap.add_argument("--mock-delay-ms", type=float, default=0.0)
    ap.add_argument("--mock-chunk-delay-ms", type=float, default=0.0)
    ap.add_argument("--mock-tokens", type=int, default=20)
    ap.add_argument("--proxy-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--settle-s", type=float, default=3.0, help="idle wait after readiness before idle RSS + load")
    ap.add_argument("--startup-timeout", type=float, default=180.0)
    ap.add_argument("--cell-max-seconds", type=float, default=120.0)
    ap.add_argument("--max-total-minutes", type=float, default=60.0)
    ap.add_argument("--out", default=None, help="results dir (default $BENCH_DIR/results/<timestamp>)")
    ap.add_argument("--summarize", metavar="DIR", help="only re-print the summary of an earlier results dir")
    ap.add_argument("--redis-answers", metavar="URL", help="only check that Redis answers PING at URL (exit 0/1)")
    a = ap.parse_args()
    if a.redis_answers:
        sys.exit(0 if redis_answers(a.redis_answers) else 1)
    if a.ours_key and not redis_answers(a.redis_url):
        log("ours-w1-redis-key: SKIPPED (no Redis on loopback answering at %s; start redis-server or set "
            "BENCH_REDIS_URL)" % a.redis_url)
        a.ours_key = False
    if a.summarize:
        meta = json.load(open(os.path.join(a.summarize, "meta.json")))
        m = meta["args"]
        cells = _cells(m)
        print(summarize(a.summarize, [t["name"] for t in meta["targets"]], cells, meta, meta.get("wall_s", 0)))
        return
    if a.quick:
        a.reps = 1
        a.nonstream = "1:200,16:500,64:800"
        a.stream = "1:100,16:200,64:400"
        a.responses, a.responses_stream = "1:200,16:500", "16:200"

    t_begin = time.monotonic()
    deadline = t_begin + a.max_total_minutes * 60
    out = a.out or os.path.join(BENCH_DIR, "results", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    scratch = os.path.join(out, "cwd")
    os.makedirs(scratch, exist_ok=True)
    py = sys.executable
    pin = (lambda cpus: ["taskset", "-c", cpus]) if not a.no_pin else (lambda cpus: [])
    if not port_free(a.mock_port):  # another mock already there (someone else's run): take any free port
        log("port %d busy, the mock takes a free one" % a.mock_port)
        a.mock_port = free_port_from(a.mock_port + 1)
    mock_base = "http://127.0.0.1:%d" % a.mock_port
    upstream = mock_base + "/v1"

    base_env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
    base_env.update({"BENCH_UPSTREAM": upstream, "MOCK_API_BASE": upstream, "PYTHONUNBUFFERED": "1",
                     # never let LiteLLM try to download its model cost map at startup
                     "LITELLM_LOCAL_MODEL_COST_MAP": "True"})

    # ---- targets
    targets = [{"name": "direct", "url": mock_base, "managed": False}]
    port = a.base_port = free_port_from(a.base_port)
    ll_py = os.path.join(a.litellm_venv, "bin", "python")
    ll_bin = os.path.join(a.litellm_venv, "bin", "litellm")
    ll_version = None
    for preset in [p for p in a.litellm.split(",") if p]:
        if preset not in LITELLM_PRESETS:
            raise SystemExit("unknown LiteLLM preset %r" % preset)
        if ll_version is None:
            ll_version = subprocess.run([ll_py, "-c", "import importlib.metadata as m;print(m.version('litellm'))"],
                                        capture_output=True, text=True).stdout.strip()
        cfg, extra = LITELLM_PRESETS[preset]
        argv = [ll_bin, "--config", os.path.join(HERE, "litellm", cfg), "--host", "127.0.0.1", "--port", str(port)]
        if preset.endswith("granian"):
            argv.append("--run_granian")
        env = dict(base_env)
        env.update(extra)
        targets.append({"name": "litellm-" + preset, "url": "http://127.0.0.1:%d" % port, "managed": True,
                        "argv": pin(a.proxy_cpus) + argv, "env": env, "port": port})
        port = free_port_from(port + 1)
    gw_version = None
    redis_prefix = "gwbench-" + time.strftime("%Y%m%d%H%M%S")
    for workers, shared in ([(1, False)] if a.ours else []) + [(n, True) for n in a.ours_workers] + (
            [(1, "key")] if a.ours_key else []):
        gw_bin = os.path.join(a.gateway_venv, "bin", "gateway")
        if not os.path.exists(gw_bin):
            raise SystemExit("no gateway at %s: run bench/run.sh (it builds the venv) or pass --gateway-venv" % gw_bin)
        if gw_version is None:
            gw_version = subprocess.run([os.path.join(a.gateway_venv, "bin", "python"), "-c",
                                         "import importlib.metadata as m;print(m.version('cost-aware-gateway'))"],
                                        capture_output=True, text=True).stdout.strip()
        env = dict(base_env)
        env.update(GATEWAY_ENV)
        # the SageMaker control plane (DescribeEndpoint poller) goes to the mock too, not to AWS
        env.update({"GATEWAY_API_KEYS": a.api_key, "BENCH_UPSTREAM_ROOT": mock_base,
                    "AWS_ENDPOINT_URL_SAGEMAKER": mock_base})
        argv = [gw_bin, "serve", "--config", GATEWAY_CONFIG, "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers)]
        name, cpus, redis = "ours", a.proxy_cpus, None
        if shared:
            name = "ours-w%d-redis" % workers
            if workers > 1:
                cpus = a.ours_workers_cpus or "0-%d" % ((os.cpu_count() or 1) - 1)
            env.update({"REDIS_URL": a.redis_url, "BENCH_REDIS_PREFIX": redis_prefix})
            redis = a.redis_url
        virtual_key = None
        if shared == "key":
            # budget and rpm far above what the bench spends: checked on every request, never refusing
            name += "-key"
            env.update({"GATEWAY_ADMIN_KEYS": BENCH_ADMIN_KEY, "GATEWAY_KEY_SECRET": "bench-key-secret"})
            virtual_key = {"alias": "bench", "team": None, "budget_usd": 1000000, "budget_period": "month",
                           "rpm": 100000000}
        if any(t["name"] == name for t in targets):
            continue
        targets.append({"name": name, "url": "http://127.0.0.1:%d" % port, "managed": True,
                        "argv": pin(cpus) + argv, "env": env, "port": port, "redis": redis, "workers": workers,
                        "cpus": cpus, "own_overhead": True, "virtual_key": virtual_key})
        port = free_port_from(port + 1)
    for spec in a.target_cmd:
        name, cmd = spec.split("=", 1)
        cmd = cmd.format(port=port, upstream=upstream, upstream_root=mock_base)
        targets.append({"name": name, "url": "http://127.0.0.1:%d" % port, "managed": True,
                        "argv": pin(a.proxy_cpus) + ["bash", "-c", "exec " + cmd], "env": dict(base_env), "port": port})
        port = free_port_from(port + 1)
    for spec in a.target:
        name, url = spec.split("=", 1)
        targets.append({"name": name, "url": url.rstrip("/"), "managed": False})

    cells = _cells(vars(a))

    calib_t = time.perf_counter()
    sum(range(10 ** 7))
    calib = time.perf_counter() - calib_t
    meta = {"started": time.ctime(), "litellm_version": ll_version, "gateway_version": gw_version,
            "machine": machine_info(), "nproc": os.cpu_count(), "python": sys.version.split()[0],
            "cpu_calib_sum1e7_s": round(calib, 4), "loadavg_start": os.getloadavg(), "args": vars(a),
            "targets": [{k: v for k, v in t.items() if k != "env"} for t in targets]}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    log("results ->", out, "| litellm", ll_version, "| cpu calib %.3fs" % calib)

    # ---- mock upstream
    if not port_free(a.mock_port):
        raise SystemExit("port %d busy (a mock already running?)" % a.mock_port)
    mock = Managed("mock", pin(a.client_cpus) + [py, os.path.join(HERE, "mock_upstream.py"), "--port", str(a.mock_port),
                                                  "--delay-ms", str(a.mock_delay_ms), "--chunk-delay-ms",
                                                  str(a.mock_chunk_delay_ms), "--tokens", str(a.mock_tokens)],
                   base_env, scratch, os.path.join(out, "mock.log"))
    cells_f = open(os.path.join(out, "cells.jsonl"), "a")
    tgt_f = open(os.path.join(out, "targets.jsonl"), "a")
    running = []
    try:
        mock.start()
        running.append(mock)
        wait_ready(mock_base, None, a.model, mock, 15)

        stop_all = False
        for rep in range(a.reps):
            c0 = time.perf_counter()
            sum(range(10 ** 7))
            cal = round(time.perf_counter() - c0, 4)
            tgt_f.write(json.dumps({"rep": rep, "target": "_calib", "cpu_calib_sum1e7_s": cal, "loadavg": os.getloadavg()}) + "\n")
            log("rep %d cpu calib %.3fs loadavg %s" % (rep, cal, os.getloadavg()))
            k = rep % len(targets)
            order = targets[k:] + targets[:k]
            for t in order:
                if stop_all or time.monotonic() > deadline:
                    stop_all = True
                    break
                rec = {"rep": rep, "target": t["name"]}
                proc = None
                pid = None
                if t["managed"]:
                    if not port_free(t["port"]):
                        raise SystemExit("port %d busy before starting %s" % (t["port"], t["name"]))
                    proc = Managed(t["name"], t["argv"], t["env"], scratch, os.path.join(out, t["name"] + ".log"))
                    pid = proc.start()
                    running.append(proc)
                    try:
                        rec["startup_s"] = round(wait_ready(t["url"], a.api_key, a.model, proc, a.startup_timeout), 3)
                    except RuntimeError as e:
                        log("!!", t["name"], "failed to start:", e)
                        rec["error"] = str(e)
                        tgt_f.write(json.dumps(rec) + "\n")
                        tgt_f.flush()
                        proc.stop()
                        running.remove(proc)
                        continue
                    time.sleep(a.settle_s)
                    rec["idle_rss_mb"] = round(tree_rss_kb(pid) / 1024, 1)
                    rec["nprocs"] = len(proc_tree(pid))
                    log("rep %d %-16s ready in %.2fs, idle RSS %.0f MB (%d procs)" % (
                        rep, t["name"], rec["startup_s"], rec["idle_rss_mb"], rec["nprocs"]))
                else:
                    wait_ready(t["url"], a.api_key, a.model, None, 30)
                api_key = create_virtual_key(t["url"], t["virtual_key"]) if t.get("virtual_key") else a.api_key
                for mode, c, n in cells:
                    if time.monotonic() > deadline:
                        stop_all = True
                        break
                    if mode.startswith("responses") and t["name"].startswith("litellm"):
                        continue  # the Responses row compares this gateway with the upstream itself
                    if t["name"] == "direct":
                        n = n * a.direct_mult
                    argv = pin(a.client_cpus) + [py, os.path.join(HERE, "load.py"), "--url", t["url"], "-n", str(n), "-c", str(c),
                                                 "--api-key", api_key, "--model", a.model, "--prompt-words", str(a.prompt_words),
                                                 "--max-tokens", str(a.mock_tokens), "--max-seconds", str(a.cell_max_seconds),
                                                 "--label", t["name"], "--json", "-"]
                    if mode in ("stream", "responses_stream"):
                        argv.append("--stream")
                    if mode.startswith("responses"):
                        argv += ["--api", "responses"]
                    rstats = RedisStats(t["redis"]) if t.get("redis") else None
                    gw_cpus = parse_cpus(t.get("cpus", a.proxy_cpus)) if pid and not a.no_pin else None
                    busy0, wall0 = (cpu_busy_s(gw_cpus), time.monotonic()) if gw_cpus else (None, None)
                    s0 = mock_stats(mock_base)
                    ob0 = overhead_buckets(t["url"]) if t.get("own_overhead") else None
                    cpu0 = tree_cpu_s(pid) if pid else None
                    wcpu0 = worker_cpu_s(pid) if pid and t.get("workers", 1) > 1 else None
                    stop_monitor = rstats.monitor("{" + redis_prefix + "}") if rstats else None
                    r = subprocess.run(argv, capture_output=True, text=True, timeout=2 * a.cell_max_seconds + 60)
                    cpu1 = tree_cpu_s(pid) if pid else None
                    busy1, wall1 = (cpu_busy_s(gw_cpus), time.monotonic()) if gw_cpus else (None, None)
                    wcpu1 = worker_cpu_s(pid) if wcpu0 is not None else None
                    redis_cmds = stop_monitor() if stop_monitor else None
                    s1 = mock_stats(mock_base)
                    ob1 = overhead_buckets(t["url"]) if ob0 else None
                    try:
                        res = json.loads(r.stdout.strip().splitlines()[-1])
                    except Exception:
                        log("!! load.py failed:", r.stdout[-500:], r.stderr[-1500:])
                        continue
                    ncalls = lambda s: sum(s.get(k, 0) for k in ("chat", "chat_stream", "sagemaker", "sagemaker_stream",
                                                                  "responses", "responses_stream"))
                    res.update({"rep": rep, "target": t["name"], "mode": mode,
                                "upstream_calls": (ncalls(s1) - ncalls(s0)) if s0 and s1 else None})
                    oq = overhead_quantiles(ob0, ob1)
                    if oq:
                        # the gateway's own account of its time per request (total minus waiting on the
                        # upstream), from its histogram: tells its work apart from scheduling delays
                        res["own_overhead_p50_le_ms"], res["own_overhead_p99_le_ms"] = oq
                    if cpu0 is not None and res["completed_ok"]:
                        warm = max(50, 2 * c)
                        res["proxy_cpu_ms_per_req"] = round(1000 * (cpu1 - cpu0) / (res["completed_ok"] + warm), 3)
                        if busy0 is not None and busy1 is not None:
                            # CPU time on the gateway's cores used by anything else (other tenants,
                            # the kernel's softirqs): high values mean a noisy cell
                            res["foreign_cpu_pct"] = round(100 * max(0.0, (busy1 - busy0) - (cpu1 - cpu0))
                                                           / ((wall1 - wall0) * len(gw_cpus)), 1)
                        if redis_cmds is not None:
                            # every command any worker sent naming this run's keys (their 1/s syncs)
                            res["redis_cmds"] = redis_cmds
                            res["redis_cmds_per_req"] = round(redis_cmds / (res["completed_ok"] + warm), 4)
                        if wcpu0 is not None:
                            res["worker_cpu_s"] = [round(wcpu1.get(p, 0) - wcpu0.get(p, 0), 3) for p in sorted(wcpu1)]
                    cells_f.write(json.dumps(res) + "\n")
                    cells_f.flush()
                    log("rep %d %-16s %-9s c=%-3d %8.1f req/s p50 %8.2f p99 %8.2f ms err %d%s%s%s%s" % (
                        rep, t["name"], mode, c, res["rps"], res["p50_ms"], res["p99_ms"], res["errors"],
                        (" cpu %.2f ms/req" % res["proxy_cpu_ms_per_req"]) if "proxy_cpu_ms_per_req" in res else "",
                        (" redis %d cmds = %.4f/req" % (res["redis_cmds"], res["redis_cmds_per_req"])) if "redis_cmds_per_req" in res else "",
                        (" foreign %.0f%%" % res["foreign_cpu_pct"]) if "foreign_cpu_pct" in res else "",
                        (" worker cpu s %s" % res["worker_cpu_s"]) if "worker_cpu_s" in res else ""))
                if proc is not None:
                    rec["after_load_rss_mb"] = round(tree_rss_kb(pid) / 1024, 1)
                    proc.stop()
                    running.remove(proc)
                tgt_f.write(json.dumps(rec) + "\n")
                tgt_f.flush()
    finally:
        for p in reversed(running):
            try:
                p.stop()
            except Exception as e:
                log("stop failed", p.name, e)
        cells_f.close()
        tgt_f.close()
        for t in targets:
            if t.get("redis"):
                try:
                    n = RedisStats(t["redis"]).delete_prefix("{" + redis_prefix + "}")
                    log("deleted %d Redis keys under {%s}" % (n, redis_prefix))
                except OSError as e:
                    log("could not delete Redis keys under {%s}: %s" % (redis_prefix, e))
                break

    wall = time.monotonic() - t_begin
    meta["wall_s"] = round(wall, 1)
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    summary = summarize(out, [t["name"] for t in targets], cells, meta, wall)
    print(summary)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(summary + "\n")


def summarize(out, names, cells, meta, wall):
    rows = [json.loads(l) for l in open(os.path.join(out, "cells.jsonl"))]
    trs = [json.loads(l) for l in open(os.path.join(out, "targets.jsonl"))]
    L = []
    mi = meta.get("machine") or {}
    L.append("%s | %s cores %s | %s GB | kernel %s" % (mi.get("date", meta.get("started")), meta["nproc"], mi.get("cpu", ""),
                                                     mi.get("mem_gb", "?"), mi.get("kernel", "?")))
    L.append("LiteLLM %s | gateway %s | py %s | cpu calib sum(range(1e7)) %.3fs | reps %d | wall %.1f min" % (
        meta["litellm_version"], meta.get("gateway_version"), meta["python"], meta["cpu_calib_sum1e7_s"],
        meta["args"]["reps"], wall / 60))
    cal = [r["cpu_calib_sum1e7_s"] for r in trs if r["target"] == "_calib"]
    if cal:
        L.append("cpu calib per rep: %s (s; lower = faster CPU, drift here = noisy host)" % cal)
    L.append("")
    L.append("%-18s %10s %13s %15s" % ("target", "startup_s", "idle_RSS_MB", "after_load_MB"))
    for nm in names:
        rr = [r for r in trs if r["target"] == nm and "error" not in r]
        if not any("startup_s" in r for r in rr):
            continue
        L.append("%-18s %10s %13s %15s" % (nm, fmt(med([r.get("startup_s") for r in rr]), 2),
                                          fmt(med([r.get("idle_rss_mb") for r in rr]), 0),
                                          fmt(med([r.get("after_load_rss_mb") for r in rr]), 0)))
    fails = [r for r in trs if "error" in r]
    for r in fails:
        L.append("  START FAILED rep %d %s: %s" % (r["rep"], r["target"], r["error"][:200]))
    L.append("")
    L.append("medians over reps; added = median over reps of (target - direct) in the same rep; cpu = gateway CPU ms per request")
    hdr = "%-18s %-16s %4s %9s %9s %9s %10s %10s %8s %s" % ("target", "mode", "c", "req/s", "p50_ms", "p99_ms", "+p50_ms", "+p99_ms", "cpu_ms", "notes")
    maxes = {}
    for mode in MODES:
        cs = [c for m, c, n in cells if m == mode]
        if not cs:
            continue
        L.append(hdr)
        for nm in names:
            for c in cs:
                rr = [r for r in rows if r["target"] == nm and r["mode"] == mode and r["concurrency"] == c]
                if not rr:
                    continue
                dd = {r["rep"]: r for r in rows if r["target"] == "direct" and r["mode"] == mode and r["concurrency"] == c}
                add50 = med([r["p50_ms"] - dd[r["rep"]]["p50_ms"] for r in rr if r["rep"] in dd])
                add99 = med([r["p99_ms"] - dd[r["rep"]]["p99_ms"] for r in rr if r["rep"] in dd])
                rps = med([r["rps"] for r in rr])
                notes = []
                errs = sum(r["errors"] for r in rr)
                if errs:
                    notes.append("ERR=%d" % errs)
                if any(r.get("timed_out_run") for r in rr):
                    notes.append("TIME-BOUNDED")
                if len(rr) > 1:
                    lo, hi = min(r["rps"] for r in rr), max(r["rps"] for r in rr)
                    notes.append("rps %.0f-%.0f" % (lo, hi))
                if mode.endswith("stream") and mode != "nonstream":
                    notes.append("ttfb50 %s" % fmt(med([r.get("ttfb_p50_ms") for r in rr]), 2))
                bad_up = [r.get("upstream_calls") for r in rr
                          if r.get("upstream_calls") is not None and r["upstream_calls"] != r["requested"] + max(50, 2 * c)]
                if bad_up:
                    notes.append("upstream_calls=%s" % bad_up)
                o50, o99 = med([r.get("own_overhead_p50_le_ms") for r in rr]), med([r.get("own_overhead_p99_le_ms") for r in rr])
                if o99 is not None:
                    notes.append("own time p50<=%s p99<=%s ms" % (fmt(o50, 2), fmt(o99, 2)))
                fo = med([r.get("foreign_cpu_pct") for r in rr])
                if fo is not None and fo >= 5:
                    notes.append("foreign cpu %.0f%%" % fo)
                rc = med([r.get("redis_cmds_per_req") for r in rr])
                if rc is not None:
                    notes.append("redis %.4f cmd/req" % rc)
                split = [r["worker_cpu_s"] for r in rr if r.get("worker_cpu_s")]
                if split:
                    tot = sum(split[0]) or 1
                    notes.append("worker cpu share %s" % "/".join("%.0f%%" % (100 * x / tot) for x in split[0]))
                L.append("%-18s %-16s %4d %9s %9s %9s %10s %10s %8s %s" % (
                    nm, mode, c, fmt(rps), fmt(med([r["p50_ms"] for r in rr]), 2), fmt(med([r["p99_ms"] for r in rr]), 2),
                    "-" if nm == "direct" else fmt(add50, 2), "-" if nm == "direct" else fmt(add99, 2),
                    fmt(med([r.get("proxy_cpu_ms_per_req") for r in rr]), 2), "; ".join(notes)))
                maxes[(nm, mode)] = max(maxes.get((nm, mode), 0), rps or 0)
        L.append("")
    L.append("max throughput (best median req/s over concurrencies):")
    for nm in names:
        parts = ["%s %s" % (m, fmt(maxes.get((nm, m)))) for m in MODES if (nm, m) in maxes]
        if parts:
            L.append("  %-18s %s" % (nm, " | ".join(parts)))
    L.append("")
    L.extend(verdict(names, rows, trs, maxes))
    L.append("")
    L.extend(markdown_table(names, rows, trs, maxes))
    L.append("results: %s" % out)
    return "\n".join(L)


# The anchor (LiteLLM proxy 1.108.7, lean-ish defaults, this kind of machine), used when
# the run itself has no LiteLLM target.
ANCHOR = {"nonstream_add_p50": 8.5, "stream_add_p50": 23.0, "nonstream_max": 127.0, "stream_max": 40.0,
          "idle_rss_mb": 330.0, "startup_s": 6.0}


def _cell(rows, nm, mode, c, key):
    rr = [r for r in rows if r["target"] == nm and r["mode"] == mode and r["concurrency"] == c]
    dd = {r["rep"]: r for r in rows if r["target"] == "direct" and r["mode"] == mode and r["concurrency"] == c}
    if key.startswith("add_"):
        k = key[4:]
        return med([r[k] - dd[r["rep"]][k] for r in rr if r["rep"] in dd])
    return med([r.get(key) for r in rr])


def _target_stat(trs, nm, key):
    return med([r.get(key) for r in trs if r["target"] == nm and "error" not in r])


def _summary_values(nm, rows, trs, maxes):
    return {"nonstream_add_p50": _cell(rows, nm, "nonstream", 1, "add_p50_ms"),
            "stream_add_p50": _cell(rows, nm, "stream", 1, "add_p50_ms"),
            "nonstream_max": maxes.get((nm, "nonstream")), "stream_max": maxes.get((nm, "stream")),
            "idle_rss_mb": _target_stat(trs, nm, "idle_rss_mb"), "startup_s": _target_stat(trs, nm, "startup_s")}


def verdict(names, rows, trs, maxes):
    """The issue's targets for `ours` (and `ours-w1-redis-key`, every request on a virtual key with a
    budget and rpm: issue 9) against LiteLLM in the same run (else the anchor numbers)."""
    L = []
    for nm in ("ours", "ours-w1-redis-key"):
        if nm in names:
            L += _verdict_for(nm, names, rows, trs, maxes)
    return L


def _verdict_for(nm, names, rows, trs, maxes):
    ll = next((n for n in names if n.startswith("litellm-lean")), None) or next((n for n in names if n.startswith("litellm")), None)
    ref = _summary_values(ll, rows, trs, maxes) if ll else {}
    src = ll or "anchor"
    ref = {k: (ref.get(k) if ref.get(k) is not None else v) for k, v in ANCHOR.items()}
    ours = _summary_values(nm, rows, trs, maxes)
    L = ["targets (%s vs %s; 'anchor' = the issue's LiteLLM numbers where this run has none):" % (nm, src)]

    def line(what, got, limit, ok, unit):
        L.append("  %-4s %-44s ours %s %s, limit %s %s" % ("MET" if ok else "MISS", what, fmt(got, 2), unit, fmt(limit, 2), unit))

    for mode in ("nonstream", "stream"):
        got, lim = ours["%s_add_p50" % mode], ref["%s_add_p50" % mode] / 10
        if got is not None:
            line("+p50 at c=1, %s <= 1/10 of LiteLLM" % mode, got, lim, got <= lim, "ms")
    for mode in ("nonstream", "stream"):
        got, lim = ours["%s_max" % mode], ref["%s_max" % mode] * 10
        if got is not None:
            line("max req/s per core, %s >= 10x LiteLLM" % mode, got, lim, got >= lim, "req/s")
    # the Responses row holds this gateway to the same limits as its chat completions
    for mode, chat in (("responses", "nonstream"), ("responses_stream", "stream")):
        got, lim = _cell(rows, nm, mode, 1, "add_p50_ms"), ref["%s_add_p50" % chat] / 10
        if got is not None:
            line("+p50 at c=1, %s <= 1/10 of LiteLLM %s" % (mode, chat), got, lim, got <= lim, "ms")
        got, lim = maxes.get((nm, mode)), ref["%s_max" % chat] * 10
        if got is not None:
            line("max req/s per core, %s >= 10x LiteLLM %s" % (mode, chat), got, lim, got >= lim, "req/s")
    got, lim = ours["idle_rss_mb"], ref["idle_rss_mb"] / 3
    if got is not None:
        line("idle RSS <= 1/3 of LiteLLM", got, lim, got <= lim, "MB")
    got = ours["startup_s"]
    if got is not None:
        line("start-up (to first 200) < 1.5 s", got, 1.5, got < 1.5, "s")
    return L


def markdown_table(names, rows, trs, maxes):
    """The README's table: one row per target."""
    L = ["| target | +p50 c=1 (ms) | +p99 c=1 (ms) | max req/s | CPU ms/req | +p50 c=1 stream (ms) | +p99 c=1 stream (ms)"
         " | max req/s stream | CPU ms/req stream | start-up (s) | idle RSS (MB) |",
         "|" + " --- |" * 11]
    for nm in names:
        v = _summary_values(nm, rows, trs, maxes)
        direct = nm == "direct"
        cpu = lambda mode: med([r.get("proxy_cpu_ms_per_req") for r in rows
                                if r["target"] == nm and r["mode"] == mode and r["concurrency"] > 1])
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            nm,
            "p50 %s" % fmt(_cell(rows, nm, "nonstream", 1, "p50_ms"), 2) if direct else fmt(v["nonstream_add_p50"], 2),
            "p99 %s" % fmt(_cell(rows, nm, "nonstream", 1, "p99_ms"), 2) if direct else fmt(_cell(rows, nm, "nonstream", 1, "add_p99_ms"), 2),
            fmt(v["nonstream_max"], 0), "-" if direct else fmt(cpu("nonstream"), 2),
            "p50 %s" % fmt(_cell(rows, nm, "stream", 1, "p50_ms"), 2) if direct else fmt(v["stream_add_p50"], 2),
            "p99 %s" % fmt(_cell(rows, nm, "stream", 1, "p99_ms"), 2) if direct else fmt(_cell(rows, nm, "stream", 1, "add_p99_ms"), 2),
            fmt(v["stream_max"], 0), "-" if direct else fmt(cpu("stream"), 2),
            "-" if direct else fmt(v["startup_s"], 2), "-" if direct else fmt(v["idle_rss_mb"], 0)))
    return L


if __name__ == "__main__":
    main()
