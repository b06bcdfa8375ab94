#!/bin/sh
# `make run`: scalegate on 127.0.0.1:8080 (examples/demo.yaml), which starts
# its demo backend instances itself (ports 9100-9199) and scales them with
# the load; the admin API is on 127.0.0.1:8081. Stays in the foreground;
# Ctrl-C (or SIGTERM) stops the gateway, and its instances with it.
#
# Environment: BUILD (default build/release) picks the binaries,
# SCALEGATE_CONFIG (default examples/demo.yaml) the gateway's config,
# SCALEGATE_ADMIN_TOKEN (default "demo-token") the admin API's token.
set -u
cd "$(dirname "$0")/.." || exit 1

BUILD=${BUILD:-build/release}
CONFIG=${SCALEGATE_CONFIG:-examples/demo.yaml}
GATEWAY=127.0.0.1:8080
ADMIN=127.0.0.1:8081
SCALEGATE_ADMIN_TOKEN=${SCALEGATE_ADMIN_TOKEN:-demo-token}
export SCALEGATE_ADMIN_TOKEN
pids=""

say() { printf '%s\n' "$*"; }
err() { printf 'run-demo: %s\n' "$*" >&2; }

# shellcheck disable=SC2317 # called from the traps
stop_all() {
    trap - INT TERM EXIT
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    for p in $pids; do wait "$p" 2>/dev/null; done
}
trap 'stop_all; exit 1' INT TERM
trap 'stop_all' EXIT

# port_busy PORT: true if something on 127.0.0.1 accepts connections there.
port_busy() {
    if command -v ss >/dev/null 2>&1; then
        ss -Htln "sport = :$1" 2>/dev/null | grep -q .
    else
        curl -s -o /dev/null -m 1 "http://127.0.0.1:$1/"
        [ $? -ne 7 ] # 7: connection refused
    fi
}

# http_ok URL: true once URL answers with any HTTP status.
http_ok() {
    curl -s -o /dev/null -m 1 "$1" 2>/dev/null
}

for bin in "$BUILD/demo-backend" "$BUILD/scalegate"; do
    if [ ! -x "$bin" ]; then
        err "$bin not found: build it first (make all)"
        exit 1
    fi
done
if ! command -v curl >/dev/null 2>&1; then
    err "curl is needed (scripts/deps.sh run installs it)"
    exit 1
fi

busy=""
for port in ${GATEWAY##*:} ${ADMIN##*:}; do
    port_busy "$port" && busy="$busy $port"
done
if [ -n "$busy" ]; then
    err "port(s)$busy on 127.0.0.1 already in use: stop whatever listens there" \
        "(ss -ltnp shows it) and try again"
    exit 1
fi

if ! "$BUILD/scalegate" -t -c "$CONFIG"; then
    err "$CONFIG does not check out (see above)"
    exit 1
fi
"$BUILD/scalegate" -c "$CONFIG" &
gw=$!
pids="$pids $gw"

# Wait up to 10 s for everything to answer.
i=0
while :; do
    ready=1
    curl -s -f -o /dev/null -m 1 "http://$GATEWAY/" 2>/dev/null || ready=0
    [ "$ready" = 1 ] && break
    for p in $pids; do
        if ! kill -0 "$p" 2>/dev/null; then
            err "a process exited during start-up (its errors are above)"
            exit 1
        fi
    done
    i=$((i + 1))
    if [ "$i" -ge 100 ]; then
        err "not answering after 10 s"
        exit 1
    fi
    sleep 0.1
done

auth="Authorization: Bearer $SCALEGATE_ADMIN_TOKEN"
say ""
say "scalegate demo: try  curl -i http://$GATEWAY/"
say ""
say "  curl -i http://$GATEWAY/                      answered by an instance (X-Backend: its port)"
say "  curl -i 'http://$GATEWAY/?delay=200'          backend waits 200 ms"
say "  curl -s 'http://$GATEWAY/?size=100000' | wc -c   a 100,000-byte body"
say "  curl -i 'http://$GATEWAY/?status=503'         backend answers 503"
say ""
say "autoscaling (2 to 8 instances on ports 9100-9199):"
say "  curl -s -H '$auth' http://$ADMIN/api/v1/scaling/status"
say "  wrk -c 16 -d 30s http://$GATEWAY/             load: watch the status grow, then shrink"
say "                                                  30 s after the load stops"
say "  curl -s -H '$auth' http://$ADMIN/api/v1/scaling/history"
say ""
say "Ctrl-C stops the gateway and its instances; the gateway's log follows."
say ""

# Stay in the foreground until the gateway exits or we are interrupted.
wait "$gw"
status=$?
rest=""
for p in $pids; do [ "$p" = "$gw" ] || rest="$rest $p"; done
pids=$rest
err "scalegate exited (status $status)"
exit "$status"
