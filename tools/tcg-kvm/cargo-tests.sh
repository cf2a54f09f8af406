#!/usr/bin/env bash
# Runs the vmm crate's test binaries against a hardware-style /dev/kvm (AMD-V emulated by
# QEMU/TCG), so the hardware-KVM guest set-up is tested on hosts that only have PVM.
#
#   tools/tcg-kvm/cargo-tests.sh [cargo test filter args...]
#
# Builds the tests statically (the rig's guest has no shared libraries), boots the rig once and
# runs every test binary there with TENANTVM_REQUIRE_KVM=1.  Needs apps/build (make -C apps).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ -d apps/build ] || { echo "cargo-tests.sh: apps/build missing (run make -C apps)" >&2; exit 2; }
target=x86_64-unknown-linux-gnu
mapfile -t bins < <(RUSTFLAGS="-C target-feature=+crt-static" cargo test -p tenantvm-vmm --no-run --target $target \
	--message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')
[ ${#bins[@]} -gt 0 ] || { echo "cargo-tests.sh: no test binaries built" >&2; exit 2; }
stage=$(mktemp -d "${TMPDIR:-/tmp}/tenantvm-tcg-tests.XXXXXX")
trap 'rm -rf "$stage"' EXIT
names=()
for b in "${bins[@]}"; do
	n=$(basename "$b"); n=${n%-*}
	# Without debug information: a dozen test binaries of ~25 MiB each no longer fit the
	# rig's 1 GiB guest once unpacked from the initramfs ("Initramfs unpacking failed").
	strip --strip-debug -o "$stage/$n" "$b"; names+=("$n")
done
cp -r apps/build "$stage/apps"
rm -rf "$stage/apps/cargo-target" "$stage/apps/go-cache" "$stage/apps/go-path"
script="set -e; for t in ${names[*]}; do echo \"== \$t\"; ./\$t --test-threads=1 $*; done"
echo "tcg-kvm: running ${names[*]} under an emulated AMD-V CPU" >&2
TCG_FILES="$(printf '%s ' "$stage"/*)" \
TCG_ENV="TENANTVM_APPS=/prog/apps TENANTVM_REQUIRE_KVM=1 TENANTVM_LEAK_RUNS=300 RUST_BACKTRACE=1 ${TCG_EXTRA_ENV:-}" \
TCG_TIMEOUT=${TCG_TIMEOUT:-900} \
	"$root/tools/tcg-kvm/run.sh" /bin/busybox sh -c "$script"
