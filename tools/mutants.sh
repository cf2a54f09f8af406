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
# MUTANT_TIMEOUT (default 90) seconds of testing per mutant (a mutant that loops forever is a
# TIMEOUT, which counts as caught).  The machine is shared: one mutant at a time, under nice.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
out=$root/target/mutants
mkdir -p "$out"

export TENANTVM_REQUIRE_KVM=1
export TENANTVM_APPS=${TENANTVM_APPS:-$root/apps/build}

# Tests of time limits on a loaded host are left out (they measure time, and on a busy machine
# their failures would count as catches), except for the timer campaign, which needs them.
SKIP_TIMING="--skip time_the_host_kept --skip wall_clock_limit --skip sleeping_is_charged --skip own_time_limit --skip a_budget_stops"

# name; file; regex of the mutants to keep (names read "FILE:LINE:COL: replace X with Y in F");
# the test targets that can see that code (fewer targets: less to link and run per mutant;
# `--lib` only where the file has unit tests: it compiles the whole crate a second time);
# arguments to the test binaries
CAMPAIGNS=(
	"reset;crates/vmm/src/reset.rs;.;--test tenant --test batch --test isolation;$SKIP_TIMING"
	"host_dirty;crates/vmm/src/memory/mod.rs;(PageBitmap::(set|set_range|get)|GuestMemory::(track_host_writes|host_dirty|host_dirty_words|mark|write))( |$);--test tenant --test batch --test isolation --test errno;$SKIP_TIMING"
	"user_memory;crates/vmm/src/syscalls/mod.rs;UserMemory<'_>::(write|region);--test isolation --test errno --test batch;$SKIP_TIMING"
	"restore_view;crates/vmm/src/restore_view.rs;.;--lib --test batch --test isolation;$SKIP_TIMING"
	"instance;crates/vmm/src/tenant/instance.rs;Instance::(reset|start_from_snapshot|place_request|refill_entropy_if_used)( |$);--test tenant --test batch --test isolation;$SKIP_TIMING"
	"snapshot;crates/vmm/src/tenant/snapshot.rs;freeze;--test tenant --test batch --test isolation;$SKIP_TIMING"
	"batch;crates/vmm/src/tenant/instance/batch.rs;.;--lib --test batch --test isolation --test tenant;$SKIP_TIMING"
	"timer;crates/vmm/src/timer.rs;.;--test tenant --test batch --test run --test threads;--skip allocation"
)
# MUTANTS_CAMPAIGNS="reset batch" runs only those campaigns.  MUTANTS_ITERATE=1 re-runs only
# the mutants a campaign's last run did not catch (cargo-mutants --iterate), e.g. to check
# that new tests kill them.
only=${MUTANTS_CAMPAIGNS:-}
iterate=${MUTANTS_ITERATE:+--iterate}
# MUTANTS_RESUME=1 resumes an interrupted run in the same scratch tree: no fresh copy (restore
# by hand the file the interrupted mutant was applied to), no baseline, --iterate.
resume=${MUTANTS_RESUME:-}
[ -n "$resume" ] && iterate=--iterate

# Each mutant is built with the `mutation` profile (release, incremental, 64 codegen units, no
# debug info): a mutant's rebuild takes seconds instead of the minute or two of `release`.
PROFILE=mutation

rust() {
	command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
	make -s -C apps >/dev/null
	local tree=${MUTANTS_TREE:-$out/tree}  # another scratch tree lets a check run beside a campaign
	mkdir -p "$tree"
	if [ -z "$resume" ]; then
		# A fresh copy of the sources; the build (target/) is kept, so it is incremental.
		find "$tree" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
		tar -C "$root" --exclude=./target --exclude=./.venv --exclude=./fuzz/target --exclude=./apps/build -cf - . |
			tar -C "$tree" -xmf -  # -m: new mtimes, so cargo rebuilds whatever a mutant left behind
	fi
	local deadline=$((SECONDS + ${MUTANTS_SECONDS:-10800}))
	# The unmutated tree must pass every campaign's tests once (cargo-mutants' own baseline is
	# then skipped: it would rebuild and rerun them for each campaign).
	if [ -z "$resume" ]; then
		echo "== baseline: the unmutated tree" >&2
		(cd "$tree" && nice -n 10 cargo test -q -p tenantvm-vmm --profile $PROFILE --lib --test tenant --test batch \
			--test isolation --test errno -- $SKIP_TIMING >"$out/baseline.log" 2>&1) || {
			tail -40 "$out/baseline.log" >&2
			echo "the unmutated tree fails its tests: no campaign would mean anything" >&2
			exit 1
		}
	fi
	for c in "${CAMPAIGNS[@]}"; do
		IFS=';' read -r name file re tests args <<<"$c"
		if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then
			continue
		fi
		local left=$((deadline - SECONDS))
		if ((left <= 60)); then
			echo "== $name: skipped, out of time (MUTANTS_SECONDS)" >&2
			continue
		fi
		echo "== cargo mutants: $name ($file, /$re/; $tests), ${left}s left" >&2
		[ -n "$iterate" ] || rm -rf "$out/$name"
		local started=$SECONDS
		# Exit status 2 means mutants survived: that is a result, not a failure of the script.
		# The test targets go to every cargo command (--cargo-arg), so that the build of each
		# mutant (`cargo test --no-run`) builds only them, not every test binary and example.
		local targets=()
		for w in $tests; do targets+=("--cargo-arg=$w"); done
		# shellcheck disable=SC2086 # $args is a list of words
		(cd "$tree" && timeout "$left" nice -n 10 cargo mutants -p tenantvm-vmm --profile $PROFILE --in-place $iterate \
			--baseline skip --timeout "${MUTANT_TIMEOUT:-90}" --build-timeout 600 --no-shuffle "${targets[@]}" \
			-f "$file" -F "$re" -o "$out/$name" -- -- $args) || true
		local n
		n=$(cat "$out/$name/mutants.out/"{caught,missed,timeout,unviable}.txt 2>/dev/null | wc -l)
		echo "-- $name: $((SECONDS - started)) s for $n mutants" >&2
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
