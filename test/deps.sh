#!/usr/bin/env bash
# What the tests need beyond Go, installed when missing and only then:
# each command is checked on its own and only the package for a missing one
# is installed. A Node.js or npm already on the machine is never replaced
# (this kind of machine ships its own Node.js with npm, and Debian's npm
# package conflicts with it). A second run installs nothing.
set -euo pipefail

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

# command → Debian package that provides it
pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
need curl curl
need chromium chromium
need systemd-analyze systemd
need nats-server nats-server # JetStream, for the cluster tests
need promtool prometheus     # promtool checks /metrics and etc/prometheus/alerts.yml
# The proxies of docs/DEPLOY.md, run by test/deploy_test.go: daemons, in
# /usr/sbin, which a user's PATH may lack.
sbin() { [ -x "${SBIN:-/usr/sbin}/$1" ] || need "$1" "$2"; }
sbin nginx nginx
sbin haproxy haproxy
if ! command -v node >/dev/null 2>&1; then
  # No Node.js at all: Debian's nodejs and its npm belong together.
  pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
elif ! command -v npm >/dev/null 2>&1; then
  # A Node.js is here but no npm. Debian's npm would only fit Debian's own
  # nodejs; with any other Node.js it would fight it, so say so and stop.
  if dpkg -S "$(readlink -f "$(command -v node)")" >/dev/null 2>&1; then
    pkgs+=(npm)
  else
    echo "deps: node at $(command -v node) has no npm beside it; install the npm that came with this Node.js" >&2
    exit 1
  fi
fi

if [ ${#pkgs[@]} -gt 0 ]; then
  echo "deps: installing ${pkgs[*]}"
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  # apt's own chatter goes to a log that is shown only when it fails.
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
         $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "deps: apt-get install ${pkgs[*]} failed" >&2
    exit 1
  fi
fi

# npm ws, the WebSocket client nobody here wrote; `npm ls` fails when the
# installed tree is missing or does not match package.json.
cd "$(dirname "$0")/node"
if ! npm ls --all >/dev/null 2>&1; then
  echo "deps: npm ci in test/node"
  npm ci --no-audit --no-fund --loglevel=error
fi
