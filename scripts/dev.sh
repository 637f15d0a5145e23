#!/usr/bin/env bash
# Set up and go on a fresh Debian/Ubuntu machine, as root:
#   scripts/dev.sh demo    builds a throwaway node in a namespace and shows a repair
#   scripts/dev.sh test    the whole test suite (lint, types, unit, real-networkd lab) on
#                          the machine's python3 and, when present, Python 3.10 (Ubuntu 22.04's)
#   scripts/dev.sh bench   the benchmark (not a test)
# Leaves a virtualenv at .venv/ with the netd-hook entry point in .venv/bin/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

deb_build_packages() {  # what packaging/build-deb.sh and lintian need, when missing
    local pkg
    for pkg in build-essential dpkg-dev debhelper dh-python ca-certificates lintian; do
        dpkg-query -W -f '${db:Status-Status}\n' "$pkg" 2>/dev/null | grep -qx installed || echo "$pkg"
    done
}

no_prometheus_server() {
    # The prometheus package's postinst enables prometheus.service and starts the server: with
    # systemd as PID 1 through systemctl, without it through /etc/init.d/prometheus (unless
    # policy-rc.d forbids, as it does in most containers). A test machine runs no Prometheus
    # (it would listen on :9090); only promtool is wanted.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true  # by its pid file; nothing if not running
    fi
}

need_os_packages() {
    local missing=()
    [ -x /lib/systemd/systemd-networkd ] || missing+=(systemd)
    command -v networkctl >/dev/null || missing+=(systemd)
    command -v dbus-daemon >/dev/null || missing+=(dbus)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nsenter >/dev/null || missing+=(util-linux)
    # The booted-node tier (tests/test_booted.py): systemd as PID 1 in containers.
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    # The package tests (tests/test_package.py) build the .deb with Debian's own python3.
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    missing+=($(deb_build_packages))
    # promtool, for the alerting rules' tests (tests/test_alerts.py): Debian ships it only in the
    # prometheus package, the server with it; without its Recommends (prometheus-node-exporter).
    command -v promtool >/dev/null || missing+=(prometheus)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing OS packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        case " ${missing[*]} " in *" prometheus "*) no_prometheus_server ;; esac
    fi
    getent passwd systemd-network >/dev/null || {
        echo "no systemd-network user: is systemd installed?" >&2; exit 1; }
}

make_venv() {  # make_venv DIR PYTHON
    local dir=$1 py=$2
    if [ ! -x "$dir/bin/python" ]; then
        "$py" -m venv "$dir"
    fi
    "$dir/bin/python" -m pip install -q --disable-pip-version-check -e "$root[test]"
}

python310() {
    for p in /root/.pyenv/versions/3.10*/bin/python3 /usr/bin/python3.10; do
        [ -x "$p" ] && { echo "$p"; return; }
    done
}

cmd=${1:-test}
[ "$(id -u)" = 0 ] || { echo "run as root: the lab uses network namespaces" >&2; exit 1; }
need_os_packages
make_venv .venv python3
case "$cmd" in
demo)
    exec .venv/bin/python -m tests.demo
    ;;
bench)
    shift
    exec .venv/bin/python -m bench.bench "$@"
    ;;
test)
    .venv/bin/ruff check netd_hook tests bench
    .venv/bin/mypy
    .venv/bin/python -m pytest -q
    py310=$(python310 || true)
    if [ -n "$py310" ]; then
        echo "--- again on $("$py310" --version) (Ubuntu 22.04's Python)"
        make_venv .venv310 "$py310"
        # The booted-node tier tests the installed package on the roots' own Pythons: once is enough.
        .venv310/bin/python -m pytest -q -p no:cacheprovider -m "not booted"
    else
        echo "--- no Python 3.10 on this machine: the 3.10 run was skipped" >&2
    fi
    ;;
*)
    echo "usage: $0 demo|test|bench" >&2; exit 2
    ;;
esac
