#!/usr/bin/env bash
# Builds the .deb (cargo-deb) from the binaries already built, checks what
# it holds, and, as root, installs it, runs the installed hub as its service
# user with the packaged configuration, and purges it again.
#
#   packaging/debian/check-deb.sh [dev|release]   (default: dev, what the tests built)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile="${1:-dev}"

version=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $version" ]; then
    cargo install cargo-deb --version "$version" --locked --quiet
fi
deb=target/patchbay-check.deb
# --no-build: the binaries come from `cargo build --workspace --bins`;
# --fast: a quick compression, since debug binaries are large. (cargo-deb
# warns that packaging the dev profile is for checks like this one only.)
log=$(mktemp)
cargo deb -p patchbay-hub --no-build --profile "$profile" --no-strip --fast -o "$deb" >"$log" 2>&1 \
    || { cat "$log"; exit 1; }

fail() { echo "check-deb: $*" >&2; exit 1; }
dpkg-deb --field "$deb" Package | grep -qx patchbay || fail "the package is not named patchbay"
dpkg-deb --field "$deb" Depends | grep -q adduser || fail "the package does not depend on adduser"
contents=$(dpkg-deb --contents "$deb")
for f in usr/bin/patchbay-hub usr/bin/patchbay usr/bin/patchbay-agent \
         lib/systemd/system/patchbay-hub.service lib/systemd/system/patchbay-agent.service \
         etc/patchbay/hub.toml etc/patchbay/agent.toml usr/share/doc/patchbay/copyright; do
    grep -q " \./$f\$" <<<"$contents" || fail "$f is missing from the package"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -t | grep -q conffiles || fail "no conffiles"
echo "check-deb: $deb holds the binaries, units and configuration"

if [ "$(id -u)" != 0 ]; then
    echo "check-deb: not root, so not installed"
    exit 0
fi
dpkg -i "$deb" >/dev/null
trap 'dpkg --purge patchbay >/dev/null 2>&1 || true' EXIT
getent passwd patchbay >/dev/null || fail "postinst made no patchbay user"
[ "$(stat -c '%U:%G %a' /etc/patchbay/hub.toml)" = "root:patchbay 640" ] || fail "hub.toml is not root:patchbay 640"
[ "$(stat -c '%U %a' /var/lib/patchbay)" = "patchbay 750" ] || fail "/var/lib/patchbay is not the service user's"
/usr/bin/patchbay-agent --config /etc/patchbay/agent.toml check >/dev/null || fail "the packaged agent.toml does not check"
# The installed hub, as its user, with the packaged configuration (on free loopback ports).
out=$(mktemp)
runuser -u patchbay -- /usr/bin/patchbay-hub --config /etc/patchbay/hub.toml \
    --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --memory-only >"$out" 2>&1 &
hub=$!
for _ in $(seq 100); do
    grep -q "console and API on" "$out" && break
    sleep 0.1
done
kill "$hub" 2>/dev/null || true
wait "$hub" 2>/dev/null || true
grep -q "console and API on" "$out" || { cat "$out"; fail "the installed hub did not start as the patchbay user"; }
dpkg --purge patchbay >/dev/null
trap - EXIT
! getent passwd patchbay >/dev/null || fail "purge left the patchbay user"
[ ! -e /usr/bin/patchbay-hub ] || fail "purge left the binaries"
echo "check-deb: installed, ran as the patchbay user, purged"
