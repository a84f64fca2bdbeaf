#!/usr/bin/env bash
# Proxy benchmark: wrk against nginx, Caddy and lbsolo's proxy, all proxying the same upstream
# (an nginx answering 'hello world' on 127.0.0.1:9101), in one run on this machine.
# Also the daemon's own proxy (`lbsolo up` with a static route to the upstream: the path a deployed
# app's requests take). Prints req/s, p50, p99 and errors per target at 64 and 512 connections, lbsolo's ratios, a
# 1,000-connection run against lbsolo and its RSS while holding 1,000 idle keep-alive connections.
# Then HTTP/2 over TLS (issue 14): h2load, 64 clients x 10 streams, against lbsolo's HTTPS listener,
# Caddy's and nginx's (http2 on), all with the same local-CA certificate and the same upstream.
# Targets (PRODUCT.md): at 64 connections lbsolo >= 0.4x nginx and >= 1.0x Caddy req/s, p99 <= 2.5x
# nginx's; no errors at 1,000 connections; HTTP/2 >= 0.6x Caddy (issue 14). Needs Debian's
# nginx-light, caddy, wrk and nghttp2-client (h2load).
# Usage: bench/proxy.sh [--h2-only] [seconds]   (--h2-only: the HTTP/2 row alone)
set -uo pipefail
cd "$(dirname "$0")/.."
H2_ONLY=0
if [ "${1:-}" = "--h2-only" ]; then
  H2_ONLY=1
  shift
fi
D=${1:-8}
# Another process on one of the ports would be measured instead of the one started here.
for port in 9101 9102 9103 9104 9105 9106 9107 9108 9109 9110; do
  if ss -ltn "sport = :$port" | grep -q LISTEN; then
    echo "bench/proxy.sh: port $port is in use; stop what listens there first" >&2
    exit 1
  fi
done
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT

# One certificate for every HTTPS listener: lbsolo's local CA, for the domain, *.domain and loopback.
.venv/bin/python - "$T" <<'PY' || exit 1
import sys
from pathlib import Path
from lbsolo.proxy_tls import LocalCA
t = Path(sys.argv[1])
chain, key = LocalCA(t / "ca").issue("localhost", "lbsolo.localhost", "*.lbsolo.localhost", "127.0.0.1")
(t / "cert.pem").write_bytes(chain)
(t / "key.pem").write_bytes(key)
PY

# The upstream and the two anchors, configured as ../shared/bench/proxy_anchors.sh does.
cat >"$T/up.conf" <<NG
worker_processes 1; daemon off; pid $T/up.pid; error_log $T/up.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:9101; location / { return 200 "hello world\n"; } } }
NG
cat >"$T/px.conf" <<NG
worker_processes 1; daemon off; pid $T/px.pid; error_log $T/px.err;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:9101; keepalive 64; }
  server { listen 127.0.0.1:9102; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; } }
  server { listen 127.0.0.1:9109 ssl http2; ssl_certificate $T/cert.pem; ssl_certificate_key $T/key.pem;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; } } }
NG
cat >"$T/Caddyfile" <<CF
{
  admin off
  auto_https off
}
http://:9103 {
  reverse_proxy 127.0.0.1:9101
}
https://localhost:9110 {
  tls $T/cert.pem $T/key.pem
  reverse_proxy 127.0.0.1:9101
}
CF
nginx -c "$T/up.conf" -e "$T/up.err" &
nginx -c "$T/px.conf" -e "$T/px.err" &
XDG_DATA_HOME=$T XDG_CONFIG_HOME=$T caddy run --config "$T/Caddyfile" --adapter caddyfile >"$T/caddy.log" 2>&1 &

# lbsolo's proxy alone, on uvloop like the daemon runs it (access log and metrics on).
.venv/bin/python - "$T" >"$T/lbsolo.log" 2>&1 <<'PY' &
import asyncio, os, sys
import uvloop
from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_tls import CertStore, LocalCA

async def main() -> None:
    sink = open(os.devnull, "w")  # access log on, as in the daemon; the lines go nowhere
    tls = CertStore("lbsolo.localhost", LocalCA(sys.argv[1] + "/ca")).server_context()
    # Every wrk connection comes from 127.0.0.1: the per-client cap is lifted for the benchmark.
    proxy = ProxyServer(
        "127.0.0.1", 9104, "lbsolo.localhost", access_log=sink.write, max_connections_per_client=100_000,
        https_port=9108, tls=tls,
    )
    proxy.set_routes({"bench": Route("bench", "v1", (Target("127.0.0.1", 9101),))})
    await proxy.start()
    await asyncio.Event().wait()

uvloop.run(main())
PY
LB_PID=$!

h2_row() {  # HTTP/2: h2load, 64 clients x 10 concurrent streams, one thread
  local name url out rps hdr
  for pair in "lbsolo https://127.0.0.1:9108/" "caddy https://localhost:9110/" "nginx https://127.0.0.1:9109/"; do
    name=${pair%% *}
    url=${pair#* }
    hdr=()
    [ "$name" = lbsolo ] && hdr=(-H ":authority: bench.lbsolo.localhost")  # the route's host; the others take any
    out=$(h2load -t1 -c64 -m10 -D"$D" --warm-up-time=1 "${hdr[@]}" "$url" 2>&1)
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    printf 'h2 %-7s c=64x10 rps=%-9s %s\n' "$name" "$rps" "$(echo "$out" | grep -E '^requests:' | tr -s ' ')"
    echo "$rps" >"$T/h2.$name"
  done
  read -r l <"$T/h2.lbsolo"; read -r c <"$T/h2.caddy"; read -r n <"$T/h2.nginx"
  echo "  h2 lbsolo/caddy rps=$(ratio "$l" "$c") (target >= 0.6)  lbsolo/nginx rps=$(ratio "$l" "$n")"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

if [ "$H2_ONLY" = 1 ]; then
  sleep 1
  h2_row
  exit 0
fi

# The same proxy inside a running daemon (`lbsolo up`, access log on), its static route to the
# upstream made as a user would (`lbsolo routes:add`): what a deployed app gets.
export LBSOLO_HOME="$T/home" LBSOLO_PROXY_PORT=9105 LBSOLO_API_PORT=9106 LBSOLO_DNS_PORT=9107
export LBSOLO_PROXY_MAX_CONNECTIONS_PER_CLIENT=100000  # every wrk connection comes from 127.0.0.1
.venv/bin/python -m lbsolo up >"$T/daemon.log" 2>&1 &
for _ in $(seq 100); do
  curl -fs -o /dev/null http://127.0.0.1:9106/healthz && break
  sleep 0.1
done
.venv/bin/python -m lbsolo routes:add bench --to 127.0.0.1:9101 >/dev/null || { cat "$T/daemon.log"; exit 1; }
sleep 2

to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }

run() {  # name port conns [host]
  local hdr=()
  [ -n "${4:-}" ] && hdr=(-H "Host: $4")
  out=$(wrk -t1 -c"$3" -d"${D}s" --latency "${hdr[@]}" "http://127.0.0.1:$2/" 2>&1)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  err=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr -s ' \n' ' ')
  printf '%-7s c=%-4s rps=%-9s p50=%sms p99=%sms %s\n' "$1" "$3" "$rps" "$p50" "$p99" "${err:-errors=0}"
  echo "$rps $p99" >"$T/$1.$3"
}


for c in 64 512; do
  run direct 9101 "$c"
  run nginx 9102 "$c"
  run caddy 9103 "$c"
  run lbsolo 9104 "$c" bench.lbsolo.localhost
  run daemon 9105 "$c" bench.lbsolo.localhost
  read -r lr lp <"$T/lbsolo.$c"; read -r nr np <"$T/nginx.$c"; read -r cr cp <"$T/caddy.$c"; read -r dr dp <"$T/daemon.$c"
  echo "  c=$c lbsolo/nginx rps=$(ratio "$lr" "$nr") (target >= 0.4)  lbsolo/caddy rps=$(ratio "$lr" "$cr") (target >= 1.0)  p99 lbsolo/nginx=$(ratio "$lp" "$np") (target <= 2.5)"
  echo "  c=$c daemon/nginx rps=$(ratio "$dr" "$nr") (aim >= 0.8)  daemon p99/nginx=$(ratio "$dp" "$np")"
done
# 1,000 connections: lbsolo must have no errors; the anchors are shown for context.
run nginx 9102 1000
run caddy 9103 1000
run lbsolo 9104 1000 bench.lbsolo.localhost

# RSS of the proxy while it holds 1,000 idle keep-alive connections (each served one request).
.venv/bin/python - "$LB_PID" <<'PY'
import socket, sys, time

def rss_mb(pid: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0

pid = sys.argv[1]
before = rss_mb(pid)
socks = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", 9104))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench.lbsolo.localhost\r\n\r\n")
    socks.append(s)
ok = 0
for s in socks:
    data = b""
    while b"hello world" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    ok += data.startswith(b"HTTP/1.1 200")
time.sleep(0.5)
print(f"lbsolo  RSS with 1000 idle keep-alive connections: {rss_mb(pid):.1f} MB ({ok}/1000 answered; {before:.1f} MB before)")
for s in socks:
    s.close()
PY

h2_row
