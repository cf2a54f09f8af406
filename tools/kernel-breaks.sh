#!/usr/bin/env bash
# Hand-written breaks of the guest kernel's reset path (crates/vmm/guest/kernel.c, kernel.S),
# applied one at a time to a scratch copy of the tree; each must make a VM test fail.
# cargo-mutants cannot mutate C or assembly, so this list is the mutation campaign for them.
#
#   tools/kernel-breaks.sh [name...]        default: every break
#
# Prints one line per break: CAUGHT (and by which tests) or MISSED.  Exits 1 if any was missed.
# The scratch copy and its build live in target/mutants/kernel-tree (kept between runs, so
# only what a break changes is rebuilt).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$root/target/mutants/kernel-tree
tests=(--test isolation --test batch --test tenant --test memory)
# Tests of time limits under a loaded host are left out: they measure time, not the reset,
# and on a busy machine their failures would count as catches.
skip=(-- --skip time_the_host_kept --skip wall_clock_limit --skip sleeping_is_charged --skip own_time_limit
	--skip a_budget_stops)

# name @ file @ exact text @ replacement @ what it breaks
BREAKS=$(
	cat <<'EOF'
no-restore@kernel.c@				restore_page(va, page);@				if (0) restore_page(va, page);@in-guest reset restores no page
no-zero-fill@kernel.c@		zero_page(va);@		if (0) zero_page(va);@pages that were zero at the snapshot are not zeroed again
host-touched-ignored@kernel.c@	if (VB(VB_HOST_TOUCHED) || i >= VB(VB_COUNT) || i >= VB_MAX)@	if (i >= VB(VB_COUNT) || i >= VB_MAX)@a request the host wrote memory for is reset in the guest (Dirty bits only)
hot-not-restored@kernel.c@				restore_page(va, page);@				if (streak[page] < VB_HOT_AFTER) restore_page(va, page);@pages dirty in a row (hot) are not restored
accessed-inverted@kernel.c@!(*pde & PTE_A))@(*pde & PTE_A))@page tables the CPU walked are skipped
last-page-skipped@kernel.c@			for (u64 i = first; i < last; i++) {@			for (u64 i = first; i + 1 < last; i++) {@the last page of every range is not restored
no-invlpg@kernel.c@				invlpg(va);@				if (0) invlpg(va);@a cleared Dirty bit stays cached in the TLB (the next write sets no Dirty bit)
no-xrstor@kernel.S@	xrstor	KBASE + GPA_XSAVE@	nop@extended register state is not restored
no-fs-base@kernel.S@	wrfsbase %rax@	nop@the FS base (TLS pointer) is not restored
no-rsp@kernel.S@	mov	SNAP(6), %rsp@	nop@a batched request starts on the previous one's stack pointer
no-r12@kernel.S@	mov	SNAP(12), %r12@	nop@a batched request starts with the previous one's r12 (callee-saved)
no-reload@kernel.c@		reload |= many;@		(void)many;@a page table changed in many places is not made known again (no CR3 reload)
no-undo@kernel.c@				*slot = e[2];@				(void)slot;@a reset leaves the request's page-table changes (memory on demand) in place
no-resync@kernel.c@				*slot = *slot;@				(void)slot;@entries the VMM changed are not written again by the guest (the shadow MMU keeps them)
no-pool-reset@kernel.c@			KD(KD_POOL_NEXT + 8 * k) = KD(KD_SNAP_POOL + 8 * k);@			(void)k;@the page pool is not put back at a reset
EOF
)

mkdir -p "$tree"
# The scratch copy: sources only (no target, .venv, build outputs); its build is kept.
find "$tree" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
tar -C "$root" --exclude=./target --exclude=./.venv --exclude=./fuzz/target --exclude=./apps/build -cf - . | tar -C "$tree" -xf -
export CARGO_TARGET_DIR=$tree/target TENANTVM_REQUIRE_KVM=1 TENANTVM_APPS=$root/apps/build
guest=$tree/crates/vmm/guest
cp "$guest/kernel.c" "$guest/kernel.c.orig"
cp "$guest/kernel.S" "$guest/kernel.S.orig"
trap 'cp "$guest/kernel.c.orig" "$guest/kernel.c"; cp "$guest/kernel.S.orig" "$guest/kernel.S"' EXIT

echo "== baseline (unbroken) build and tests" >&2
(cd "$tree" && cargo test -q -p tenantvm-vmm --release "${tests[@]}" "${skip[@]}" >"$tree/baseline.log" 2>&1) ||
	echo "warning: the unbroken tree fails some tests (see $tree/baseline.log): a CAUGHT below may mean nothing" >&2

missed=0
while IFS='@' read -r name file from to what; do
	[ -n "$name" ] || continue
	if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then
		continue
	fi
	cp "$guest/kernel.c.orig" "$guest/kernel.c"
	cp "$guest/kernel.S.orig" "$guest/kernel.S"
	python3 - "$guest/$file" "$from" "$to" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"{path}: the text to break occurs {text.count(old)} times: {old!r}")
open(path, "w").write(text.replace(old, new))
PY
	log=$tree/$name.log
	if ! (cd "$tree" && cargo build -q -p tenantvm-vmm --release --tests >"$log" 2>&1); then
		# A break that does not build proves nothing about the tests.
		echo "NOBUILD $name: $what (see $log)"
		missed=$((missed + 1))
	elif (cd "$tree" && cargo test -p tenantvm-vmm --release --no-fail-fast "${tests[@]}" "${skip[@]}" >"$log" 2>&1); then
		echo "MISSED  $name: $what"
		missed=$((missed + 1))
	else
		failed=$(grep -E '^test .* FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | sort -u | tr '\n' ' ' || true)
		[ -n "$failed" ] || failed="(a test binary crashed, see $log)"
		echo "CAUGHT  $name: $what -- by: $failed"
	fi
done <<<"$BREAKS"
exit $((missed > 0))
