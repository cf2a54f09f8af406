#!/usr/bin/env bash
# Mutation campaign over the isolation-critical code (`make mutants`; not part of `make test`).
#
#   tools/mutants.sh [rust|kernel|all]      default all
#
# rust    cargo-mutants over the Rust that restores, tracks or writes guest memory (the
#         campaigns below, most important first), each mutant built once and run against the
#         crate's VM tests of isolation (not the TCG rig).  It works in place in a scratch copy
#         of the tree (target/mutants/tree), so the checkout is never modified and the build
#         is incremental from one mutant to the next.
# kernel  the hand-written breaks of the guest kernel's reset path (tools/kernel-breaks.sh),
#         applied one at a time to a scratch copy of the tree; each must make a test fail.
#
# Results: target/mutants/<campaign>/mutants.out (cargo-mutants' own report: caught.txt,
# missed.txt, timeout.txt, unviable.txt) and target/mutants/kernel-breaks.txt.  The reviewed
# report, with every survivor explained or killed, is bench/results/mutants.md.
#
# Bounded in time: MUTANTS_SECONDS (default 10800) for the whole Rust campaign,
# MUTANT_TIMEOUT (default 60) seconds of testing per mutant (a mutant that loops forever is a
# TIMEOUT, which counts as caught).  The machine is shared: one mutant at a time, under nice.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
out=$root/target/mutants
mkdir -p "$out"

export TENANTVM_REQUIRE_KVM=1
export TENANTVM_APPS=${TENANTVM_APPS:-$root/apps/build}

# The crate's VM tests that exercise isolation and the syscall layer.  Tests of time limits on
# a loaded host are left out (they measure time, and on a busy machine their failures would
# count as catches), except for the timer campaign, which needs them.
TESTS=(--lib --test tenant --test batch --test isolation --test errno)
SKIP_TIMING=(--skip time_the_host_kept --skip wall_clock_limit --skip sleeping_is_charged --skip own_time_limit
	--skip a_budget_stops)

# name | file | regex of the mutants to keep (names read "FILE:LINE:COL: replace X with Y in F")
CAMPAIGNS=(
	"reset|crates/vmm/src/reset.rs|."
	"host_dirty|crates/vmm/src/memory/mod.rs|(PageBitmap::(set|set_range|get)|GuestMemory::(track_host_writes|host_dirty|host_dirty_words|mark|write))( |$)"
	"user_memory|crates/vmm/src/syscalls/mod.rs|UserMemory<'_>::(write|region)"
	"restore_view|crates/vmm/src/restore_view.rs|."
	"instance|crates/vmm/src/tenant/instance.rs|Instance::(reset|start_from_snapshot|end_requests_at)"
	"snapshot|crates/vmm/src/tenant/snapshot.rs|freeze"
	"batch|crates/vmm/src/tenant/instance/batch.rs|."
	"timer|crates/vmm/src/timer.rs|."
)

rust() {
	command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
	make -s -C apps >/dev/null
	local tree=$out/tree
	mkdir -p "$tree"
	# A fresh copy of the sources; the build (target/) is kept, so it is incremental.
	find "$tree" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
	tar -C "$root" --exclude=./target --exclude=./.venv --exclude=./fuzz/target --exclude=./apps/build -cf - . |
		tar -C "$tree" -xf -
	local deadline=$((SECONDS + ${MUTANTS_SECONDS:-10800}))
	for c in "${CAMPAIGNS[@]}"; do
		IFS='|' read -r name file re <<<"$c"
		local left=$((deadline - SECONDS))
		if ((left <= 60)); then
			echo "== $name: skipped, out of time (MUTANTS_SECONDS)" >&2
			continue
		fi
		local skip=("${SKIP_TIMING[@]}")
		[ "$name" = timer ] && skip=()
		echo "== cargo mutants: $name ($file, /$re/), ${left}s left" >&2
		rm -rf "$out/$name"
		# Exit status 2 means mutants survived: that is a result, not a failure of the script.
		(cd "$tree" && timeout "$left" nice -n 10 cargo mutants -p tenantvm-vmm --profile release --in-place \
			--timeout "${MUTANT_TIMEOUT:-60}" --build-timeout 900 --no-shuffle \
			-f "$file" -F "$re" -o "$out/$name" -- "${TESTS[@]}" -- "${skip[@]}") || true
		for kind in caught missed timeout unviable; do
			printf '%-9s %4d\n' "$kind" "$(cat "$out/$name/mutants.out/$kind.txt" 2>/dev/null | wc -l)"
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
