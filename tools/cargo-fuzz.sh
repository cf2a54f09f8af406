#!/usr/bin/env bash
# libFuzzer campaigns on the VMM's parsers (cargo fuzz; stable toolchain via RUSTC_BOOTSTRAP):
#   elf      ElfImage::parse + load planning on arbitrary bytes (seeded with apps/build)
#   request  request encoding: every pointer/length stays inside the area, fields round-trip
#   tools/cargo-fuzz.sh [seconds per target, default $FUZZ_SECONDS or 300]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-${FUZZ_SECONDS:-300}}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
mkdir -p corpus/elf corpus/request
for f in ../apps/build/*.musl ../apps/build/hello.glibc-pie ../apps/build/hello; do
	[ -f "$f" ] && cp -n "$f" corpus/elf/ 2>/dev/null || true
done
for target in elf request; do
	echo "== cargo fuzz $target for ${secs}s" >&2
	cargo fuzz run "$target" -O corpus/"$target" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -3
done
