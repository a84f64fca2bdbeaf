#!/usr/bin/env bash
# DNS benchmark: dnsperf against dnsmasq and against lbsolo's DNS server, same names, one run.
# Prints queries/s, average latency and lost queries for both, and the ratio lbsolo/dnsmasq.
# Target (PRODUCT.md): ratio >= 0.25 with 0 lost. Needs Debian's dnsperf and dnsmasq-base.
# Usage: bench/dns.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$T"' EXIT

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MASQ=$(free_port); OURS=$(free_port)

dnsmasq --no-daemon --port="$MASQ" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --address=/lbsolo.localhost/127.0.0.1 --pid-file="$T/pid" >"$T/dnsmasq.log" 2>&1 &
# lbsolo's DNS server alone (the same code `lbsolo up` runs), on uvloop like the daemon.
.venv/bin/python - "$OURS" >"$T/lbsolo.log" 2>&1 <<'PY' &
import asyncio, sys
import uvloop
from lbsolo.dns import DNSServer, Zone

async def main() -> None:
    server = DNSServer("127.0.0.1", int(sys.argv[1]), Zone(apps=frozenset(f"app{i}" for i in range(1, 51))))
    await server.start()
    await asyncio.Event().wait()

uvloop.run(main())
PY
sleep 1.5
for i in $(seq 1 50); do echo "app$i.lbsolo.localhost A"; done > "$T/q"

run() {  # name port
  out=$(dnsperf -s 127.0.0.1 -p "$2" -d "$T/q" -l "$D" -c 4 -Q 200000 2>&1)
  qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
  lat=$(echo "$out" | awk '/Average Latency/ {print $4}')
  lost=$(echo "$out" | awk '/Queries lost/ {print $3}')
  printf '%-8s qps=%s avg_latency=%ss lost=%s\n' "$1" "$qps" "$lat" "$lost"
  echo "$qps" > "$T/$1.qps"
}
echo "machine: $(uname -m), $(nproc) cores; dnsperf ${D}s, 4 clients, 50 names"
run dnsmasq "$MASQ"
run lbsolo "$OURS"
awk -v a="$(cat "$T/lbsolo.qps")" -v b="$(cat "$T/dnsmasq.qps")" \
  'BEGIN { printf "ratio lbsolo/dnsmasq = %.2f (target >= 0.25)\n", a / b }'
