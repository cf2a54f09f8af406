#!/usr/bin/env bash
# Installs the Debian packages tenantvm needs to build, test and serve (idempotent).
# Run as root, or with sudo available.  Used by `make setup`.
set -euo pipefail
packages=(
	gcc make binutils libc6-dev musl-tools         # guest programs and the guest kernel
	g++ python3 perl lua5.4                        # dynamically linked guest programs (C++, CPython, Perl, Lua)
	liblua5.4-dev                                  # the Lua binding (apps/sdk/lua), a C module for lua5.4
	golang-go                                      # a static Go guest program (threads, epoll)
	python3-venv python3-dev                       # the Python package
	qemu-system-x86 linux-image-amd64 busybox-static cpio kmod xz-utils zstd   # hardware-KVM test rig
	wrk linux-perf                                 # HTTP benchmarks and their profile
	chromium fonts-dejavu-core                     # the dashboard test (headless browser)
	redis-server haproxy                           # the key-value store and load-balancer tests (started by the tests)
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "setup-host: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
