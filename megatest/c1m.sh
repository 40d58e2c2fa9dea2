#!/bin/sh
# One million connections on this machine: `make c1m` (docs/C1M.md).
#
# Tunes the kernel (when root), starts a manager on loopback with enough
# workers for N connections under this machine's open-file limit, runs
# `megatest a 127.0.0.1 -n N` with a few broadcast rounds, prints the
# server's stats while the connections are held, and stops everything.
# Environment: N (1000000), RATE (15000), BROADCAST (3), HOLD (30s),
# TRANSPORT (sse), PORT (8000), API_PORT (9000), BIN (bin), OUT (c1m.json),
# HEARTBEAT (15s: a million streams then cost ~67k writes a second),
# WORKERS (enough for N under the open-file limit), MEGATEST_FLAGS (extra).
set -eu

N=${N:-1000000}
RATE=${RATE:-15000}
BROADCAST=${BROADCAST:-3}
HOLD=${HOLD:-30s}
TRANSPORT=${TRANSPORT:-sse}
PORT=${PORT:-8000}
API_PORT=${API_PORT:-9000}
BIN=${BIN:-bin}
OUT=${OUT:-c1m.json}
HEARTBEAT=${HEARTBEAT:-15s}

if [ "$(id -u)" = 0 ]; then
	echo "== kernel tuning (etc/sysctl.d/60-megacomet.conf)"
	sysctl -q -p etc/sysctl.d/60-megacomet.conf
else
	echo "== not root: kernel left as it is (see docs/C1M.md)"
fi

# Workers: the open-file limit per process caps each, and SO_REUSEPORT
# spreads clients by hash, not evenly: 5 % headroom.
per=$(( $(ulimit -Hn) - 64 ))
workers=$(( (N * 105 / 100 + per - 1) / per ))
[ "$workers" -lt "$(nproc)" ] && workers=$(nproc)
workers=${WORKERS:-$workers}

dir=$(mktemp -d)
cat > "$dir/c1m.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
workers = $workers
[api]
listen = "127.0.0.1:$API_PORT"
[comet]
heartbeat = "$HEARTBEAT"
[manager]
socket = "$dir/stats.sock"
pid_file = "$dir/megacomet.pid"
TOML

echo "== manager: $workers workers of up to $per connections ($dir/server.log)"
"$BIN/megacomet" -config "$dir/c1m.toml" > "$dir/server.log" 2>&1 &
server=$!
stats=""
cleanup() {
	[ -n "$stats" ] && kill "$stats" 2>/dev/null || true
	kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM
i=0
until "$BIN/megacomet" stats -socket "$dir/stats.sock" > /dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 300 ] || ! kill -0 "$server" 2>/dev/null; then
		echo "manager did not start:"; cat "$dir/server.log"; exit 1
	fi
	sleep 0.1
done

# The server's view, every 20 s, while megatest runs.
( while sleep 20; do echo "== server"; "$BIN/megacomet" stats -socket "$dir/stats.sock" | head -4; done ) &
stats=$!

echo "== megatest a 127.0.0.1 -n $N -rate $RATE -broadcast $BROADCAST -hold $HOLD"
"$BIN/megatest" a 127.0.0.1 -port "$PORT" -api "127.0.0.1:$API_PORT" -transport "$TRANSPORT" \
	-n "$N" -rate "$RATE" -broadcast "$BROADCAST" -round-wait 60s -hold "$HOLD" -ping 100ms -report 5s -json "$OUT" ${MEGATEST_FLAGS:-}
echo "== summary in $OUT"
