#!/bin/sh
# Installs the Debian packages scalegate needs to build, test and benchmark.
# Idempotent and quiet when everything is already there: it asks dpkg first
# and only runs apt-get (update, then install) for what is missing.
#
#   scripts/deps.sh            build + run deps (make run)
#   scripts/deps.sh test       + test deps     (make test)
#   scripts/deps.sh bench      + benchmark deps (make bench)
#   scripts/deps.sh fuzz       + fuzzing deps  (make fuzz)
set -eu

pkgs="gcc make pkg-config libuv1-dev libyaml-dev libjansson-dev libhiredis-dev curl"
for want in "$@"; do
    case "$want" in
    run) ;;
    test) pkgs="$pkgs libcmocka-dev python3 python3-pytest procps wrk redis-server chromium prometheus" ;;
    bench) pkgs="$pkgs wrk nginx-light haproxy varnish procps python3 redis-server" ;;
    fuzz) pkgs="$pkgs clang libclang-rt-dev" ;;
    *) echo "deps.sh: unknown set '$want' (run, test, bench, fuzz)" >&2; exit 2 ;;
    esac
done

missing=""
for p in $pkgs; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in
    *"install ok installed"*) ;;
    *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

echo "scalegate: installing missing Debian packages:$missing" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "deps.sh: need root (or sudo) to install:$missing" >&2; exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >&2
