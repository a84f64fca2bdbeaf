#!/usr/bin/env bash
# HTTPS benchmark (issue 14): lbsolo's HTTPS listener against nginx and Caddy with TLS, all three
# proxying the same upstream (an nginx answering 'hello world' on 127.0.0.1:9121), with the same
# certificate (lbsolo's local CA, ECDSA P-256), one worker each, in one run on this machine.
# Rows, per target: HTTP/1.1 keep-alive (wrk, 64 connections), new TLS connections (wrk, 64
# connections, `Connection: close`: one request per handshake), HTTP/2 (h2load, 64 clients x 10
# streams). Prints req/s and p99 (wrk) or req/s and mean latency (h2load), and lbsolo's ratios.
# Targets (issue 14): keep-alive >= 0.85x nginx; new connections >= 0.5x nginx and >= 1.2x Caddy;
# HTTP/2 >= 0.6x Caddy. The upstream and the anchors are configured as bench/proxy.sh does.
# Needs Debian's nginx-light, caddy, wrk and nghttp2-client (h2load).
# Usage: bench/https.sh [seconds]   (PY=path/to/python to use another interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
D=${1:-8}
PY=${PY:-.venv/bin/python}
for port in 9121 9122 9123 9124 9125; do
  if ss -ltn "sport = :$port" | grep -q LISTEN; then
    echo "bench/https.sh: port $port is in use; stop what listens there first" >&2
    exit 1
  fi
done
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT

"$PY" - "$T" <<'PY' || exit 1
import sys
from pathlib import Path
from lbsolo.proxy_tls import LocalCA
t = Path(sys.argv[1])
chain, key = LocalCA(t / "ca").issue("localhost", "lbsolo.localhost", "*.lbsolo.localhost", "127.0.0.1")
(t / "cert.pem").write_bytes(chain)
(t / "key.pem").write_bytes(key)
PY

cat >"$T/up.conf" <<NG
worker_processes 1; daemon off; pid $T/up.pid; error_log $T/up.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:9121; location / { return 200 "hello world\n"; } } }
NG
cat >"$T/px.conf" <<NG
worker_processes 1; daemon off; pid $T/px.pid; error_log $T/px.err;
events { worker_connections 4096; }
http { access_log off;
  upstream app { server 127.0.0.1:9121; keepalive 64; }
  server { listen 127.0.0.1:9122 ssl http2; ssl_certificate $T/cert.pem; ssl_certificate_key $T/key.pem;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; } } }
NG
# Caddy: any Host (the requests name bench.lbsolo.localhost, as lbsolo's route needs); a site bound
# to other names would answer them with an empty 200 without proxying. No SNI (h2load to an
# address sends none): the same certificate.
cat >"$T/Caddyfile" <<CF
{
  admin off
  auto_https off
  default_sni localhost
}
https://:9123 {
  tls $T/cert.pem $T/key.pem
  reverse_proxy 127.0.0.1:9121
}
CF
nginx -c "$T/up.conf" -e "$T/up.err" &
nginx -c "$T/px.conf" -e "$T/px.err" &
XDG_DATA_HOME=$T XDG_CONFIG_HOME=$T caddy run --config "$T/Caddyfile" --adapter caddyfile >"$T/caddy.log" 2>&1 &

# lbsolo's proxy alone, on uvloop like the daemon runs it (access log on), the same certificate
# (its local CA's, for the domain and *.domain), HTTPS on 9125.
"$PY" - "$T" >"$T/lbsolo.log" 2>&1 <<'PY' &
import asyncio, os, sys
import uvloop
from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_tls import CertStore, LocalCA

async def main() -> None:
    sink = open(os.devnull, "w")
    store = CertStore("lbsolo.localhost", LocalCA(sys.argv[1] + "/ca"))
    knows = getattr(store, "knows", None)  # older lbsolo: no ClientHello look
    extra = {"tls_knows": knows} if knows else {}
    proxy = ProxyServer(
        "127.0.0.1", 9124, "lbsolo.localhost", access_log=sink.write, max_connections_per_client=100_000,
        https_port=9125, tls=store.server_context(), **extra,
    )
    proxy.set_routes({"bench": Route("bench", "v1", (Target("127.0.0.1", 9121),))})
    await proxy.start()
    await asyncio.Event().wait()

uvloop.run(main())
PY
for _ in $(seq 50); do
  curl -ksf -o /dev/null https://127.0.0.1:9125/ -H "Host: bench.lbsolo.localhost" && break
  sleep 0.1
done
sleep 1
# Each target must proxy (the upstream's body), for this Host and with or without SNI.
for url in https://127.0.0.1:9125/ https://127.0.0.1:9122/ https://127.0.0.1:9123/; do
  body=$(curl -ksS --max-time 5 -H "Host: bench.lbsolo.localhost" "$url")
  h2=$(curl -ksS --http2 --max-time 5 -H "Host: bench.lbsolo.localhost" "$url")
  if [ "$body" != "hello world" ] || [ "$h2" != "hello world" ]; then
    echo "bench/https.sh: $url does not proxy to the upstream (got '$body' / '$h2')" >&2
    cat "$T/caddy.log" "$T/lbsolo.log" >&2
    exit 1
  fi
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }

wrk_row() {  # kind name url [extra header]
  local out rps p99 err hdr=(-H "Host: bench.lbsolo.localhost")
  [ -n "${4:-}" ] && hdr+=(-H "$4")
  out=$(wrk -t1 -c64 -d"${D}s" --latency "${hdr[@]}" "$3" 2>&1)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  err=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr -s ' \n' ' ')
  printf '%-6s %-7s c=64 rps=%-9s p99=%sms %s\n' "$1" "$2" "$rps" "$p99" "${err:-errors=0}"
  echo "$rps $p99" >"$T/$1.$2"
}

h2_row() {  # name url
  local out rps mean
  out=$(h2load -t1 -c64 -m10 -D"$D" --warm-up-time=1 -H ":authority: bench.lbsolo.localhost" "$2" 2>&1)
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  mean=$(echo "$out" | awk '/^time for request:/ {print $6}')
  printf 'h2     %-7s c=64x10 rps=%-9s mean=%s %s\n' "$1" "$rps" "$mean" "$(echo "$out" | grep -E '^requests:' | tr -s ' ')"
  echo "$rps 0" >"$T/h2.$1"
}

targets=("lbsolo https://127.0.0.1:9125/" "nginx https://127.0.0.1:9122/" "caddy https://127.0.0.1:9123/")
for pair in "${targets[@]}"; do wrk_row keep "${pair%% *}" "${pair#* }"; done
for pair in "${targets[@]}"; do wrk_row new "${pair%% *}" "${pair#* }" "Connection: close"; done
for pair in "${targets[@]}"; do h2_row "${pair%% *}" "${pair#* }"; done

for kind in keep new h2; do
  read -r lr lp <"$T/$kind.lbsolo"; read -r nr np <"$T/$kind.nginx"; read -r cr cp <"$T/$kind.caddy"
  line="  $kind lbsolo/nginx rps=$(ratio "$lr" "$nr") lbsolo/caddy rps=$(ratio "$lr" "$cr")"
  [ "$kind" != h2 ] && line+=" p99 lbsolo/nginx=$(ratio "$lp" "$np")"
  echo "$line"
done
echo "  targets: keep >= 0.85x nginx; new >= 0.5x nginx and >= 1.2x caddy; h2 >= 0.6x caddy"
