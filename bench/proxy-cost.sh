#!/usr/bin/env bash
# make proxy-bench: what a TLS-terminating proxy costs per connection, next
# to megacomet's own, at N (100,000) held SSE connections: megacomet alone
# (plaintext), then behind nginx, then behind HAProxy, with the configs of
# docs/DEPLOY.md (etc/nginx, etc/haproxy) adapted only as this box needs:
#   - one process may hold 20,000 files here, so nginx runs a worker (with
#     worker_connections 19000), and HAProxy a process, per 9,000 clients
#     (each client is two connections in the proxy);
#   - one source address has ~64k ports for its connections to megacomet
#     (measured: connects stalled at 59,815), so the proxy connects from 4
#     loopback addresses (nginx proxy_bind over split_clients, HAProxy
#     source).
# Memory is PSS (shared pages split between sharers), from
# /proc/PID/smaps_rollup; the kernel's is slab and TCP buffers, for every
# socket on the box (megatest's ends too). TLS handshakes cost both sides
# CPU on these 2 cores, so connections open at RATE (600) a second: faster,
# the proxies' connects to megacomet time out.
# Then, through each proxy, RELOAD_N (10,000) TLS clients, half SSE and half
# WebSocket, with -pub: megacomet is reloaded (SIGHUP) once all are held,
# and megatest says whether any client saw the reload (connect_failed,
# closed_unexpected, lost, duplicates). SKIP_MEMORY=1 runs only that.
# Writes bench/proxy-cost.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
OUT=${OUT:-bench/proxy-cost.txt}
PORT=18700
PROXY_PORT=18743
per=9000
procs=$(( (N + per - 1) / per ))
dir=$(mktemp -d)
trap 'pkill -f "megatest m 127.0.0.1" 2>/dev/null; pkill -f "$dir" 2>/dev/null; sleep 2; rm -rf "$dir"' EXIT

make -s megacomet megatest
sysctl -q -p etc/sysctl.d/60-megacomet.conf >/dev/null 2>&1 || true
sysctl -qw "net.ipv4.ip_local_port_range=1024 65535"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/privkey.pem" \
  -out "$dir/fullchain.pem" -days 1 -subj /CN=localhost 2>/dev/null
cat "$dir/fullchain.pem" "$dir/privkey.pem" > "$dir/haproxy.pem"

pss() { # total PSS in bytes of the pids given
  local t=0
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    t=$((t + ${v:-0} * 1024))
  done
  echo $t
}
# kmem is the kernel's memory for sockets: slab (socket structs) and TCP
# buffers (sockstat's mem, in pages).
kmem() {
  local slab tcp
  slab=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
  tcp=$(awk '/^TCP:/ {for (i = 1; i <= NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
  echo $(( slab * 1024 + tcp * 4096 ))
}

start_megacomet() { # extra server lines
  workers=$(( (N + 18000) / 18000 ))
  cat > "$dir/mc.toml" <<EOF
[server]
listen = "0.0.0.0:$PORT"
workers = $workers
drain = "5s"
$1
[api]
listen = "127.0.0.1:$((PORT + 1))"
[manager]
socket = "$dir/mc.sock"
pid_file = "$dir/mc.pid"
state_dir = "$dir"
log_level = "warn"
EOF
  bin/megacomet -config "$dir/mc.toml" > "$dir/mc.log" 2>&1 &
  for _ in $(seq 100); do bin/megacomet stats -socket "$dir/mc.sock" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "megacomet did not start"; cat "$dir/mc.log"; exit 1
}
stop_megacomet() { kill "$(cat "$dir/mc.pid")" || true; while [ -e "$dir/mc.pid" ] && kill -0 "$(cat "$dir/mc.pid")" 2>/dev/null; do sleep 0.2; done; sleep 1; }
mc_pss() { bin/megacomet stats -json -socket "$dir/mc.sock" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["manager"].get("pss_bytes",0)+sum(w.get("pss_bytes",0) for w in d["workers"]))'; }
mc_conns() { bin/megacomet stats -json -socket "$dir/mc.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])'; }
# mc_serving GEN: connections when every worker is of generation GEN and
# ready, else -1.
mc_serving() { bin/megacomet stats -json -socket "$dir/mc.sock" 2>/dev/null | python3 -c '
import json,sys; d=json.load(sys.stdin)
ok=d["generation"]==int(sys.argv[1]) and all(w["generation"]==int(sys.argv[1]) and w["state"]=="ready" for w in d["workers"])
print(d["connections"] if ok else -1)' "$1" || echo -1; }

# reload_through LABEL PORT: RELOAD_N TLS clients through the proxy on
# PORT, half SSE and half WebSocket, publishing to them; a SIGHUP of
# megacomet once all are held; megatest's summary once all are back.
reload_through() {
  local label=$1 port=$2 half=$(( ${RELOAD_N:-10000} / 2 ))
  local pids=() t0=$SECONDS
  for tr in sse ws; do
    bin/megatest "${tr:0:1}" 127.0.0.1 -port "$port" -api "127.0.0.1:$((PORT + 1))" -transport "$tr" -n "$half" \
      -tls -tls-insecure -pub 100 -src 127.0.1.1-127.0.1.40 -q -json "$dir/reload-$tr.json" > "$dir/reload-$tr.megatest" 2>&1 &
    pids+=($!)
  done
  local until=$((SECONDS + ${WAIT:-600}))
  while [ $SECONDS -lt $until ] && [ "$(mc_serving 1)" -lt $((2 * half)) ]; do sleep 1; done
  local held=$((SECONDS - t0))
  sleep 5 # messages flowing
  kill -HUP "$(cat "$dir/mc.pid")"
  local t1=$SECONDS
  until=$((SECONDS + ${WAIT:-600}))
  while [ $SECONDS -lt $until ] && [ "$(mc_serving 2)" -lt $((2 * half)) ]; do sleep 1; done
  local back=$((SECONDS - t1))
  sleep 5 # messages flowing again
  kill -INT "${pids[@]}"; wait "${pids[@]}" || true
  for tr in sse ws; do
    python3 - "$dir/reload-$tr.json" "$label" "$tr" "$held" "$back" <<'PY' | tee -a "$OUT"
import json, sys
d = json.load(open(sys.argv[1]))
print("%-24s reload, %-3s %5d held (all after %s s, back %s s after the SIGHUP): connect_failed %d, http_errors %d, closed_unexpected %d, reconnects %d, published %d, lost %d, duplicates %d" % (
    sys.argv[2], sys.argv[3], d["connections"], sys.argv[4], sys.argv[5], d["connect_failed"], d["http_errors"],
    d["closed_unexpected"], d["reconnects"], d["published"], d["lost"], d["duplicates"]))
PY
  done
}

# hold N through port $1 (tls or not), then report: label, proxy pids
measure() {
  local label=$1 port=$2 tls=$3; shift 3
  local base; base=$(kmem)
  local prp0=0
  [ $# -gt 0 ] && prp0=$(pss $(pgrep -f "$*" | tr '\n' ' '))
  local flags=()
  [ "$tls" = 1 ] && flags=(-tls -tls-insecure)
  bin/megatest m 127.0.0.1 -port "$port" -n "$N" -rate "${RATE:-600}" "${flags[@]}" -q -json "$dir/$label.json" > "$dir/$label.megatest" 2>&1 &
  local mt=$!
  local until=$((SECONDS + ${WAIT:-600})) # past it, measure what is held
  while [ $SECONDS -lt $until ] && [ "$(mc_conns)" -lt "$N" ]; do sleep 2; done
  sleep 15 # settle: handshakes done, buffers back
  local held; held=$(mc_conns)
  local mcp; mcp=$(mc_pss)
  local prp=0
  [ $# -gt 0 ] && prp=$(( $(pss $(pgrep -f "$*" | tr '\n' ' ')) - prp0 ))
  local mtp; mtp=$(pss $(pgrep -f "bin/megatest m 127.0.0.1" | tr '\n' ' '))
  local kern=$(( $(kmem) - base ))
  printf '%-24s held %6d  megacomet %5d B/conn  proxy %6d B/conn (+ %d MB idle)  kernel, all sockets %6d B/conn  megatest %6d B/conn\n' \
    "$label" "$held" $((mcp / held)) $((prp / held)) $((prp0 >> 20)) $((kern / held)) $((mtp / held)) | tee -a "$OUT"
  kill -INT $mt; wait $mt || true
}

: > "$OUT"
echo "# proxy-cost $(date -u +%F) N=$N, $(nproc) cores; floor: $(cd worker && go test -run "^$" -bench BenchmarkLoopbackFloor -benchtime 20x . 2>/dev/null | awk '/LoopbackFloor/ {for (i = 2; i <= NF; i++) if ($i == "cpu-ns/conn") printf "%.1f us of CPU a write and its read", $(i - 1) / 1000}')" | tee -a "$OUT"

if [ -z "${SKIP_PLAIN:-}${SKIP_MEMORY:-}" ]; then
  start_megacomet ""
  measure "megacomet alone (plain)" "$PORT" 0
  stop_megacomet
fi

if [ -z "${SKIP_NGINX:-}" ]; then
start_megacomet 'trusted_proxies = ["127.0.0.0/29"]'
sed -e "s|listen 443 ssl|listen 127.0.0.1:$PROXY_PORT ssl|" \
    -e "s|server 127.0.0.1:8000 max_fails=0;|server 127.0.0.1:$PORT max_fails=0;|" \
    -e 's|    access_log off;|    access_log off;\n    split_clients "$remote_addr$remote_port" $mc_src { 25% 127.0.0.1; 25% 127.0.0.2; 25% 127.0.0.3; * 127.0.0.4; }|' \
    -e 's|            proxy_pass http://megacomet;|            proxy_pass http://megacomet;\n            proxy_bind $mc_src;|' \
    -e "s|worker_processes auto|worker_processes $procs|" -e "s|worker_connections 262144|worker_connections 19000|" \
    -e "s|/etc/megacomet/tls/|$dir/|" \
    -e "s|/run/nginx-megacomet.pid|$dir/nginx.pid|" -e "s|/var/log/nginx/megacomet-error.log|$dir/nginx.log|" \
    etc/nginx/megacomet.conf > "$dir/nginx.conf"
/usr/sbin/nginx -c "$dir/nginx.conf" -g 'daemon off;' &
sleep 2
[ -z "${SKIP_MEMORY:-}" ] && measure "nginx, TLS" "$PROXY_PORT" 1 "nginx: worker process"
reload_through "nginx, TLS" "$PROXY_PORT"
kill "$(cat "$dir/nginx.pid")"; sleep 2
stop_megacomet
fi

start_megacomet 'proxy_protocol = true'
sed -e "s|bind :443 ssl|bind 127.0.0.1:$PROXY_PORT ssl|" -e "s|/etc/megacomet/tls/|$dir/|" \
    -e "s|    server megacomet 127.0.0.1:8000 send-proxy-v2 maxconn 500000|    balance roundrobin\n    server mc1 127.0.0.1:$PORT send-proxy-v2 source 127.0.0.1\n    server mc2 127.0.0.1:$PORT send-proxy-v2 source 127.0.0.2\n    server mc3 127.0.0.1:$PORT send-proxy-v2 source 127.0.0.3\n    server mc4 127.0.0.1:$PORT send-proxy-v2 source 127.0.0.4|" \
    etc/haproxy/megacomet.cfg > "$dir/haproxy.cfg"
for _ in $(seq "$procs"); do /usr/sbin/haproxy -f "$dir/haproxy.cfg" -db > /dev/null 2>&1 & done
sleep 2
[ -z "${SKIP_MEMORY:-}" ] && measure "HAProxy, TLS" "$PROXY_PORT" 1 "haproxy -f $dir/haproxy.cfg"
reload_through "HAProxy, TLS" "$PROXY_PORT"
pkill -f "haproxy -f $dir/haproxy.cfg" || true
stop_megacomet
