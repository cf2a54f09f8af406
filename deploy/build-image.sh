#!/bin/sh
# Builds the tenantvm container image (Containerfile) with podman, from Debian's package mirror
# alone: no container registry is needed.  Unless BASE names an image to build on, the base
# image is made here: a minimal Debian bookworm from debootstrap, imported into podman as
# localhost/tenantvm-base:bookworm (once; `podman rmi` it to make it again).  docs/deploy.md.
#
#   deploy/build-image.sh                    # localhost/tenantvm:latest on a debootstrapped base
#   BASE=docker.io/library/debian:bookworm-slim deploy/build-image.sh    # where a registry is reachable
#   deploy/build-image.sh --run              # then serve the example tenants from it (port 8080)
#
# Needs podman (Debian: apt-get install podman) and, to make the base, debootstrap and root.
# Settings (environment): IMAGE, BASE, MIRROR, SECURITY_MIRROR, WORK (where the rootfs is made),
# ISOLATION (podman build's: chroot by default, see below), CA_BUNDLE (below), PORT (--run).
set -eu
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/tenantvm:latest}
BASE=${BASE:-}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PORT=${PORT:-8080}
# The build's RUN steps run chrooted into the image rather than in an OCI container: they need
# no cgroups and set no resource limits, so the build also works where crun cannot start a
# container (a host with hybrid cgroups, or without CAP_SYS_RESOURCE, e.g. inside a container).
ISOLATION=${ISOLATION:-chroot}
# A CA bundle the build's downloads (crates.io, PyPI) must trust besides Debian's CAs, for a
# TLS-intercepting proxy: the host's SSL_CERT_FILE by default.  Mounted for the build only.
CA_BUNDLE=${CA_BUNDLE-${SSL_CERT_FILE:-}}
LOCAL_BASE=localhost/tenantvm-base:bookworm

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

command -v podman >/dev/null || die "podman is not installed (Debian: apt-get install podman)"

if [ -z "$BASE" ]; then
	BASE=$LOCAL_BASE
	if podman image exists "$BASE"; then
		say "base image $BASE exists"
	else
		command -v debootstrap >/dev/null || die "debootstrap is not installed (Debian: apt-get install debootstrap), or set BASE"
		[ "$(id -u)" = 0 ] || die "making the base image with debootstrap needs root (or set BASE to an existing image)"
		WORK=${WORK:-$(mktemp -d "${TMPDIR:-/var/tmp}/tenantvm-base.XXXXXX")}
		rootfs=$WORK/rootfs
		rm -rf "$rootfs"
		mkdir -p "$WORK"
		say "debootstrap bookworm from $MIRROR into $rootfs"
		debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
			die "debootstrap failed: see $WORK/debootstrap.log"
		# The image's sources: the release, its updates and security updates (rustc-web, the
		# Rust toolchain the build stage uses, is in bookworm-security).
		cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
SOURCES
		rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
		say "importing it as $BASE"
		tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
		rm -rf "$WORK"
	fi
fi

say "building $IMAGE on $BASE"
ca_args=""
if [ -n "$CA_BUNDLE" ]; then
	[ -r "$CA_BUNDLE" ] || die "CA_BUNDLE $CA_BUNDLE cannot be read"
	say "the build trusts the CA bundle $CA_BUNDLE"
	ca_args="--build-arg BUILD_CA_BUNDLE=/run/tenantvm-build-ca.pem -v $CA_BUNDLE:/run/tenantvm-build-ca.pem:ro"
fi
# shellcheck disable=SC2086 # ca_args is split into its options on purpose (paths without spaces)
podman build --isolation="$ISOLATION" --build-arg BASE="$BASE" $ca_args -t "$IMAGE" -f Containerfile .

if [ "${1:-}" = "--run" ]; then
	say "serving the example tenants on port $PORT (Ctrl-C stops)"
	exec podman run --rm -p "$PORT:8080" --device /dev/kvm "$IMAGE"
fi
