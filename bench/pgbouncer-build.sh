#!/usr/bin/env bash
# bench/pgbouncer-build.sh: builds a PgBouncer that can run pgbench -M prepared
# in transaction pooling mode (protocol-level prepared statements arrived in
# PgBouncer 1.21), so bench/run.sh can compare shardproxy against it in all
# three modes. Debian 12 ships 1.18; this builds the version Debian 13
# (trixie) ships, from Debian's own source package, with the system's
# libevent and OpenSSL. Nothing is installed system-wide except the build
# dependencies (gcc, make, pkg-config, libevent-dev, libssl-dev).
#
# Usage: bash bench/pgbouncer-build.sh DEST_DIR
# Prints the path of the built binary on stdout; logs go to stderr.
# An existing build in DEST_DIR is reused.
set -euo pipefail

DEST=${1:?usage: pgbouncer-build.sh DEST_DIR}
SUITE=${PGBOUNCER_SUITE:-trixie}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '%s pgbouncer-build: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$DEST"
existing=$(ls -1 "$DEST"/pgbouncer-1.* 2>/dev/null | sort -V | tail -1 || true)
if [[ -n $existing && -x $existing ]]; then
	echo "$existing"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/pgbouncer-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

missing=()
for p in gcc make pkg-config; do command -v "$p" >/dev/null || missing+=("$p"); done
pkg-config --exists libevent 2>/dev/null || missing+=(libevent-dev)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if ((${#missing[@]})); then
	[[ $EUID -eq 0 ]] || { log "missing build dependencies: ${missing[*]} (install them, or run as root)"; exit 1; }
	log "installing build dependencies: ${missing[*]}"
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >&2
fi

# A private source list and state directory: the machine's own apt
# configuration is not touched.
mkdir -p "$work/lists/partial" "$work/src"
echo "deb-src $MIRROR $SUITE main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$work/lists" -o APT::Get::List-Cleanup=0)
log "fetching the pgbouncer source package from Debian $SUITE"
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only pgbouncer >&2 2>&1)
# dpkg-source applies Debian's patches (security fixes among them); without
# dpkg-dev the upstream tarball is built as released.
dsc=$(ls -1 "$work"/src/pgbouncer_*.dsc 2>/dev/null | head -1)
if command -v dpkg-source >/dev/null && [[ -n $dsc ]]; then
	(cd "$work/src" && dpkg-source --no-check -x "$dsc" >&2)
else
	orig=$(ls -1 "$work"/src/pgbouncer_*.orig.tar.* | head -1)
	[[ -n $orig ]] || { log "no pgbouncer source tarball fetched"; exit 1; }
	tar -xf "$orig" -C "$work/src"
fi
dir=$(ls -d "$work"/src/pgbouncer-*/ | head -1)
ver=$(basename "$dir")
ver=${ver#pgbouncer-}
log "building PgBouncer $ver"
(cd "$dir" && ./configure --without-cares --without-systemd --without-pam --without-ldap >"$work/configure.log" 2>&1 &&
	make -j"$(nproc)" >"$work/make.log" 2>&1) || {
	tail -30 "$work/configure.log" "$work/make.log" >&2 2>/dev/null
	log "build failed"
	exit 1
}
install -m 755 "$dir/pgbouncer" "$DEST/pgbouncer-$ver"
"$DEST/pgbouncer-$ver" --version | head -1 >&2
echo "$DEST/pgbouncer-$ver"
