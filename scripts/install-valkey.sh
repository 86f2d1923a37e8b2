#!/usr/bin/env bash
# Makes valkey-server, valkey-cli and valkey-benchmark (Valkey 8) available: the tests use
# valkey-cli and valkey-benchmark as independent clients, and the perf harness runs Valkey
# side by side with corekv. Does nothing when they are already installed.
#
# Debian and Ubuntu: installs the distribution's package, from the backports suite when the
# release itself does not carry Valkey 8. Needs root (or sudo) for apt.
set -euo pipefail

have_valkey() {
    command -v valkey-server >/dev/null && command -v valkey-cli >/dev/null &&
        command -v valkey-benchmark >/dev/null
}

if have_valkey; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-valkey: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

if ! command -v apt-get >/dev/null; then
    echo "install-valkey: no apt-get here; install Valkey 8 (valkey-server, valkey-tools) by hand" >&2
    exit 1
fi

. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq

# The release's own package first; backports when the release has none (or an older major).
candidate=$(apt-cache policy valkey-server 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -n "${candidate:-}" ] && [ "$candidate" != "(none)" ] && [ "${candidate%%.*}" -ge 8 ] 2>/dev/null; then
    $SUDO apt-get install -y -qq valkey-server valkey-tools >/dev/null
else
    suite="${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}-backports"
    if ! grep -rqs "$suite" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | grep -v security | awk '{print $2}' | head -n1)
        if [ -z "$mirror" ]; then
            mirror=$(grep -hs '^deb ' /etc/apt/sources.list | grep -v security | awk '{print $2}' | head -n1)
        fi
        [ -n "$mirror" ] || { echo "install-valkey: cannot find the apt mirror" >&2; exit 1; }
        printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$mirror" "$suite" | $SUDO tee "/etc/apt/sources.list.d/corekv-$suite.sources" >/dev/null
        $SUDO apt-get update -qq
    fi
    $SUDO apt-get install -y -qq -t "$suite" valkey-server valkey-tools >/dev/null
fi

# Packages may start a service on 6379; corekv's tests and benchmarks never rely on it.
if command -v systemctl >/dev/null && systemctl is-active --quiet valkey-server 2>/dev/null; then
    $SUDO systemctl stop valkey-server || true
fi
have_valkey
valkey-server --version
