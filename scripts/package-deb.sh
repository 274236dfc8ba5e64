#!/usr/bin/env bash
# Builds the thinrelay Debian package for this machine's architecture from the
# built tree (`npm run package` builds first): the bundled CLI, the compiled
# better-sqlite3 addon for this Node.js ABI, /usr/bin/thinrelay, the systemd
# unit, the modules-load config and the conffile /etc/thinrelay/agent.env.
# It depends on the Node.js major it was built with (the addon's ABI).
# Usage: scripts/package-deb.sh [OUT_DIR]   (default dist/deb); prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist/deb}")

[ -f dist/cli/thinrelay.mjs ] || { echo "package-deb: dist/cli/thinrelay.mjs missing: npm run build first" >&2; exit 2; }
addon=node_modules/better-sqlite3/build/Release/better_sqlite3.node
[ -f "$addon" ] || { echo "package-deb: $addon missing: npm ci first" >&2; exit 2; }

version=$(node -p 'require("./package.json").version')
arch=$(dpkg --print-architecture)
node_major=$(node -p 'process.versions.node.split(".")[0]')
node_abi=$(node -p 'process.versions.modules')
# The addon must load in this Node (same ABI as the one the package depends on).
node -e 'require("better-sqlite3")(":memory:").close()'

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
lib="$root/usr/lib/thinrelay"
mkdir -p "$lib" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/modules-load.d" \
  "$root/etc/thinrelay" "$root/usr/share/doc/thinrelay" "$root/DEBIAN"

# The CLI bundle (chunks load lazily: the SDKs only when a command needs them).
cp -r dist/cli/. "$lib/"
rm -f "$lib"/*.map "$lib"/chunks/*.map
# better-sqlite3: its JS, the compiled addon, and its one runtime dependency chain.
for m in better-sqlite3 bindings file-uri-to-path; do
  mkdir -p "$lib/node_modules/$m"
  cp node_modules/$m/package.json "$lib/node_modules/$m/"
  cp node_modules/$m/*.js "$lib/node_modules/$m/" 2>/dev/null || true
  for f in LICENSE LICENSE.md; do [ -f node_modules/$m/$f ] && cp node_modules/$m/$f "$lib/node_modules/$m/"; done
done
cp -r node_modules/better-sqlite3/lib "$lib/node_modules/better-sqlite3/"
mkdir -p "$lib/node_modules/better-sqlite3/build/Release"
cp "$addon" "$lib/node_modules/better-sqlite3/build/Release/"
strip --strip-unneeded "$lib/node_modules/better-sqlite3/build/Release/better_sqlite3.node" 2>/dev/null || true

cat >"$root/usr/bin/thinrelay" <<'EOF'
#!/bin/sh
# thinrelay CLI and agent (Debian package): the bundle under /usr/lib/thinrelay.
exec /usr/bin/node /usr/lib/thinrelay/thinrelay.mjs "$@"
EOF
chmod 0755 "$root/usr/bin/thinrelay"
cp deploy/systemd/thinrelay-agent.service "$root/lib/systemd/system/"
cp deploy/modules-load.d/thinrelay.conf "$root/usr/lib/modules-load.d/"
install -m 0600 deploy/etc/agent.env "$root/etc/thinrelay/agent.env"
cp LICENSE "$root/usr/share/doc/thinrelay/copyright" 2>/dev/null ||
  echo "thinrelay: Apache-2.0" >"$root/usr/share/doc/thinrelay/copyright"

installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: thinrelay
Version: $version
Architecture: $arch
Maintainer: thinrelay maintainers <thinrelay@example.invalid>
Section: admin
Priority: optional
Installed-Size: $installed_kb
Depends: nodejs (>= $node_major), nodejs (<< $((node_major + 1))), e2fsprogs, mount, util-linux, coreutils, findutils, perl-base, attr
Recommends: dmsetup, thin-provisioning-tools
Description: S3 image tarballs become ready-to-boot block devices on this host
 The thinrelay CLI and agent daemon: applies image events from this host's
 SQS queue (download, verify, unpack into ext4 on a devicemapper thin device
 or loop devices, snapshot, activate) with crash-safe SQLite checkpoints.
 Built for Node.js $node_major (module ABI $node_abi).
EOF
echo /etc/thinrelay/agent.env >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
# Not enabled here: /etc/thinrelay/agent.env must be filled in first.
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  systemctl try-restart thinrelay-agent.service || true
fi
EOF
cat >"$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop thinrelay-agent.service || true
fi
EOF
cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
# The state (/var/lib/thinrelay: database, images) is never removed by the package.
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/thinrelay_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
