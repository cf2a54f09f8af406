#!/usr/bin/env bash
# Mutation campaign over the isolation-critical code (`make mutants`; not part of `make test`).
#
#   tools/mutants.sh [rust|kernel|all]      default all
#
# rust    cargo-mutants over the Rust that restores, tracks or writes guest memory (the files
#         and function filters below), each mutant built once and run against the crate's VM
#         tests that exercise isolation (not the TCG rig).  cargo-mutants works in its own
#         copy of the tree, so the checkout is never modified.
# kernel  the hand-written breaks of the guest kernel's reset path (tools/kernel-breaks.sh),
#         applied one at a time to a scratch copy of the tree; each must make a test fail.
#
# Results: target/mutants/<campaign>/mutants.out (cargo-mutants' own report: caught.txt,
# missed.txt, timeout.txt, unviable.txt) and target/mutants/kernel-breaks.txt.  The reviewed
# report, with every survivor explained or killed, is bench/results/mutants.md.
#
# Bounded in time: MUTANTS_SECONDS (default 10800) for the whole Rust campaign,
# MUTANT_TIMEOUT (default 120) seconds of testing per mutant.  The machine is shared: the
# campaign runs one mutant at a time under `nice`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
out=$root/target/mutants
mkdir -p "$out"

export TENANTVM_REQUIRE_KVM=1
export TENANTVM_APPS=${TENANTVM_APPS:-$root/apps/build}

# The crate's VM tests that exercise per-request isolation and the syscall layer.
TESTS=(--lib --test tenant --test batch --test isolation --test errno)

# name | file | regex of the mutants to keep (cargo-mutants names them "replace X with Y in F")
CAMPAIGNS=(
	"reset|crates/vmm/src/reset.rs|."
	"restore_view|crates/vmm/src/restore_view.rs|."
	"batch|crates/vmm/src/batch.rs|."
	"timer|crates/vmm/src/timer.rs|."
	"memory|crates/vmm/src/memory/mod.rs|PageBitmap::(set|get|clear|words)|GuestMemory::(track_host_writes|host_dirty|mark|write|zero)"
	"user_memory|crates/vmm/src/syscalls/mod.rs|UserMemory::(write|region)"
	"snapshot|crates/vmm/src/tenant.rs|."
	"instance|crates/vmm/src/instance.rs|reset|start_from_snapshot|end_requests_at|call_batch|restore"
)

rust() {
	command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
	make -s -C apps >/dev/null
	local deadline=$((SECONDS + ${MUTANTS_SECONDS:-10800}))
	for c in "${CAMPAIGNS[@]}"; do
		IFS='|' read -r name file re <<<"$c"
		local left=$((deadline - SECONDS))
		if ((left <= 60)); then
			echo "== $name: skipped, out of time (MUTANTS_SECONDS)" >&2
			continue
		fi
		echo "== cargo mutants: $name ($file, /$re/), ${left}s left" >&2
		# Exit status 2 means mutants survived: that is a result, not a failure of the script.
		timeout "$left" nice -n 10 cargo mutants -p tenantvm-vmm --profile release -j1 \
			--timeout "${MUTANT_TIMEOUT:-120}" --build-timeout 600 --no-shuffle \
			-f "$file" -F "$re" -o "$out/$name" -- "${TESTS[@]}" || true
		for kind in caught missed timeout unviable; do
			printf '%-9s %4d\n' "$kind" "$(wc -l <"$out/$name/mutants.out/$kind.txt" 2>/dev/null || echo 0)"
		done
		if [ -s "$out/$name/mutants.out/missed.txt" ]; then
			echo "-- missed:" && cat "$out/$name/mutants.out/missed.txt"
		fi
	done
}

case "$what" in
rust) rust ;;
kernel) nice -n 10 tools/kernel-breaks.sh | tee "$out/kernel-breaks.txt" ;;
all)
	rust
	nice -n 10 tools/kernel-breaks.sh | tee "$out/kernel-breaks.txt"
	;;
*)
	echo "usage: $0 [rust|kernel|all]" >&2
	exit 2
	;;
esac
