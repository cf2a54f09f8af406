#!/usr/bin/env bash
# tools/tcg-kvm/run.sh — run one static x86-64 Linux binary inside a QEMU/TCG
# guest whose emulated AMD-V CPU gives it a real, hardware-style /dev/kvm
# (kvm_amd). This is how tenantvm's ordinary hardware-KVM code path is tested
# on hosts that have no VT-x/AMD-V of their own (no host KVM is used at all).
#
# Usage:
#   run.sh [-v] BINARY [ARGS...]     run BINARY ARGS... in the guest
#   run.sh --check                   check prerequisites, print what is missing
#   run.sh -h | --help
#
#   -v   also print the guest's kernel console log to stderr
#
# Environment (all optional):
#   TCG_FILES="f1 d2 ..."   extra files/dirs copied next to the binary (the guest cwd, /prog)
#   TCG_ENV="K=V ..."       environment variables for the program (no spaces inside one item);
#                           it otherwise gets only PATH=/prog:/bin HOME=/prog
#   TCG_TIMEOUT=300         wall-clock limit for the whole QEMU run, seconds
#   TCG_MEM=1024            guest RAM, MiB
#   TCG_WORKDIR=${TMPDIR:-/tmp}/tenantvm-tcg
#                           kernel cache (cache/) and per-run scratch dirs (runs/)
#   TCG_KERNEL=/boot/vmlinuz-VER   guest kernel (default: newest one that has kvm-amd.ko)
#   TCG_PVH=1               0 = always boot the bzImage, never the extracted vmlinux
#   TCG_CPU=max             QEMU CPU model; it must expose svm
#   KVM_AMD_ARGS=""         kvm_amd module parameters, e.g. "npt=0"
#   TCG_KEEP=1              keep the per-run scratch dir (initramfs, console log)
#
# Exit status: the program's own (128+N if it died from signal N);
#              124 on timeout; 125 when the rig itself failed (reason on stderr).
#
# How it works: the script packs an initramfs holding a static busybox, the
# kvm-amd module with everything it depends on (from modules.dep) and the
# binary. QEMU boots the Debian kernel with it under TCG and -cpu max (which
# has svm). The guest's /init loads the modules, makes sure /dev/kvm exists and
# runs the program with stdout+stderr on the second serial port (ttyS1 at
# 0x2f8, which QEMU writes to a file of its own, so kernel messages on the
# console ttyS0 never mix with it), then prints a marker line with the exit
# code on the console and powers off. Booting the uncompressed vmlinux through
# its PVH entry point skips decompressing the kernel under emulation.

set -uo pipefail

ME=tcg-kvm
RIG_FAIL=125
TIMEOUT_RC=124
MARK=@@TENANTVM-TCG   # prefix of the guest's status lines on the console

die() { echo "$ME: $*" >&2; exit $RIG_FAIL; }

usage() {
	# Print the header comment (minus the shebang) as help.
	sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
}

# ---------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------

# is_static FILE: true unless FILE is an ELF with a program interpreter.
is_static() {
	! readelf -lW "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

# find_kvm_amd MODDIR: print the modules.dep key of kvm-amd (e.g.
# kernel/arch/x86/kvm/kvm-amd.ko.xz), or nothing.
find_kvm_amd() {
	[ -r "$1/modules.dep" ] || return 1
	grep -oE '^[^:]*/kvm-amd\.ko(\.(xz|zst|gz))?:' "$1/modules.dep" | head -1 | tr -d :
}

# pick_kernel: set KERNEL and MODDIR (TCG_KERNEL wins; else newest kernel
# in /boot whose module tree has kvm-amd).
pick_kernel() {
	KERNEL= MODDIR=
	if [ -n "${TCG_KERNEL:-}" ]; then
		KERNEL=$TCG_KERNEL
		MODDIR=/lib/modules/$(basename "$KERNEL" | sed 's/^vmlinuz-//')
		return 0
	fi
	local k ver
	for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -rV); do
		ver=${k#/boot/vmlinuz-}
		if [ -n "$(find_kvm_amd "/lib/modules/$ver")" ]; then
			KERNEL=$k MODDIR=/lib/modules/$ver
			return 0
		fi
	done
	return 1
}

BUSYBOX=
pick_busybox() {
	local b
	for b in /bin/busybox /usr/bin/busybox; do
		if [ -x "$b" ] && is_static "$b"; then BUSYBOX=$b; return 0; fi
	done
	return 1
}

# check_prereqs [quiet]: report every missing piece; return 1 if any.
check_prereqs() {
	local missing=() pkgs=() t
	for t in readelf:binutils cpio:cpio python3:python3 timeout:coreutils; do
		command -v "${t%%:*}" >/dev/null || { missing+=("${t%%:*}"); pkgs+=("${t#*:}"); }
	done
	command -v qemu-system-x86_64 >/dev/null ||
		{ missing+=("qemu-system-x86_64"); pkgs+=(qemu-system-x86); }
	pick_busybox || { missing+=("a static busybox"); pkgs+=(busybox-static); }
	if ! pick_kernel || [ ! -r "$KERNEL" ]; then
		missing+=("a readable /boot/vmlinuz-* with kvm-amd.ko in /lib/modules"); pkgs+=(linux-image-amd64)
	elif [ -z "$(find_kvm_amd "$MODDIR")" ]; then
		missing+=("kvm-amd.ko in $MODDIR/modules.dep"); pkgs+=(linux-image-amd64)
	fi
	# Only needed when the module tree is compressed.
	if [ -n "${MODDIR:-}" ] && [ -r "$MODDIR/modules.dep" ]; then
		grep -q '\.ko\.xz:' "$MODDIR/modules.dep" && ! command -v xz >/dev/null &&
			{ missing+=("xz"); pkgs+=(xz-utils); }
		grep -q '\.ko\.zst:' "$MODDIR/modules.dep" && ! command -v zstd >/dev/null &&
			{ missing+=("zstd"); pkgs+=(zstd); }
	fi
	if [ ${#missing[@]} -eq 0 ]; then
		[ "${1:-}" = quiet ] || echo "$ME: ok: $(command -v qemu-system-x86_64), kernel $KERNEL, busybox $BUSYBOX"
		return 0
	fi
	echo "$ME: missing: $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')" >&2
	echo "$ME: install with: apt-get install -y --no-install-recommends $(printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ')" >&2
	return 1
}

# ---------------------------------------------------------------------------
# Kernel: uncompressed vmlinux for PVH boot, cached under the work dir
# ---------------------------------------------------------------------------

# extract_vmlinux BZIMAGE OUT: write the ELF kernel embedded in a bzImage.
# The compressed payload's place comes from the boot header (setup_sects at
# 0x1f1, payload_offset/payload_length at 0x248/0x24c, boot protocol >= 2.08);
# its format from its magic bytes.
extract_vmlinux() {
	python3 - "$1" "$2" <<'PY'
import lzma, struct, subprocess, sys, zlib
src, dst = sys.argv[1], sys.argv[2]
img = open(src, 'rb').read()
if img[0x202:0x206] != b'HdrS' or struct.unpack_from('<H', img, 0x206)[0] < 0x208:
    sys.exit('not a bzImage with boot protocol >= 2.08')
setup_sects = img[0x1f1] or 4
off, length = struct.unpack_from('<II', img, 0x248)
payload = img[(setup_sects + 1) * 512 + off:][:length]
if payload.startswith(b'\xfd7zXZ\x00'):
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
elif payload.startswith(b'\x1f\x8b'):
    elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
elif payload.startswith(b'\x5d\x00\x00'):
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
elif payload.startswith(b'\x28\xb5\x2f\xfd'):
    # The kernel build appends the 4-byte uncompressed size; zstd would call it garbage.
    elf = subprocess.run(['zstd', '-dc'], input=payload[:-4], stdout=subprocess.PIPE,
                         check=True).stdout
else:
    sys.exit('unknown payload compression %r' % payload[:4])
if not elf.startswith(b'\x7fELF'):
    sys.exit('payload is not an ELF image')
open(dst, 'wb').write(elf)
PY
}

# has_pvh_note ELF: true if the kernel has the Xen PVH entry note
# (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12), which QEMU needs to boot it directly.
has_pvh_note() {
	readelf -nW "$1" 2>/dev/null | grep -qE 'Xen[[:space:]].*\(0x00000012\)'
}

# pick_boot_image: set BOOT_IMAGE (vmlinux if usable, else the bzImage) and BOOT_KIND.
pick_boot_image() {
	BOOT_IMAGE=$KERNEL BOOT_KIND=bzImage
	[ "${TCG_PVH:-1}" = 1 ] || return 0
	local cache=$WORKDIR/cache vmlinux
	vmlinux=$cache/vmlinux-$(basename "$KERNEL" | sed 's/^vmlinuz-//')
	mkdir -p "$cache" || return 0
	if [ ! -s "$vmlinux" ] || [ "$vmlinux" -ot "$KERNEL" ]; then
		# Write under a private name, then rename: parallel runs never see half a file.
		local tmp=$vmlinux.tmp.$$ err
		if err=$(extract_vmlinux "$KERNEL" "$tmp" 2>&1); then
			mv -f "$tmp" "$vmlinux"
		else
			rm -f "$tmp"
			[ "$VERBOSE" = 1 ] && echo "$ME: cannot extract vmlinux ($err); booting the bzImage" >&2
			return 0
		fi
	fi
	if has_pvh_note "$vmlinux"; then
		BOOT_IMAGE=$vmlinux BOOT_KIND=PVH
	elif [ "$VERBOSE" = 1 ]; then
		echo "$ME: $vmlinux has no PVH note; booting the bzImage" >&2
	fi
}

# ---------------------------------------------------------------------------
# initramfs
# ---------------------------------------------------------------------------

# Modules to load, dependencies first: resolved recursively from modules.dep.
declare -A DEPS=() SEEN=()
LOAD_ORDER=()
read_modules_dep() {
	local key rest
	while IFS= read -r line; do
		key=${line%%:*} rest=${line#*:}
		DEPS[$key]=$rest
	done < "$MODDIR/modules.dep"
}
add_module() {
	local m=$1 i deps
	[ -n "${SEEN[$m]:-}" ] && return
	SEEN[$m]=1
	deps=(${DEPS[$m]:-})
	# modules.dep lists a module's dependencies with the most basic one last.
	for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_module "${deps[i]}"; done
	LOAD_ORDER+=("$m")
}

# copy_module KEY DEST: copy (and decompress) one module.
copy_module() {
	local src=$MODDIR/$1
	case "$src" in
	*.ko) cp "$src" "$2" ;;
	*.ko.xz) xz -dc "$src" >"$2" ;;
	*.ko.zst) zstd -qdc "$src" >"$2" ;;
	*.ko.gz) gzip -dc "$src" >"$2" ;;
	*) false ;;
	esac
}

# shq STRING: quote STRING for a POSIX shell (single quotes, ' as '\'').
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

build_initramfs() {
	local root=$RUN/root name mods=() m n
	mkdir -p "$root"/{bin,dev,proc,sys,tmp,mod,prog} || die "cannot create $root"
	cp "$BUSYBOX" "$root/bin/busybox" || die "cannot copy $BUSYBOX"

	read_modules_dep
	add_module "$(find_kvm_amd "$MODDIR")"
	for m in "${LOAD_ORDER[@]}"; do
		n=$(basename "$m"); n=${n%%.ko*}
		copy_module "$m" "$root/mod/$n.ko" || die "cannot copy module $MODDIR/$m"
		mods+=("$n")
	done

	name=$(basename "$BIN")
	cp "$BIN" "$root/prog/$name" || die "cannot copy $BIN"
	chmod +x "$root/prog/$name"
	local f
	for f in ${TCG_FILES:-}; do
		[ -e "$f" ] || die "TCG_FILES: '$f' does not exist"
		cp -RL --preserve=mode "$f" "$root/prog/" || die "TCG_FILES: cannot copy '$f'"
	done

	# The program's command line, quoted for the guest shell.
	local cmd="env -i PATH=/prog:/bin HOME=/prog" kv a
	for kv in ${TCG_ENV:-}; do
		[[ $kv == [A-Za-z_]*=* ]] || die "TCG_ENV: '$kv' is not KEY=VALUE"
		cmd+=" $(shq "$kv")"
	done
	cmd+=" $(shq "/prog/$name")"
	for a in "$@"; do cmd+=" $(shq "$a")"; done

	# /init. Unescaped $ are filled in now; \$ are for the guest shell.
	cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "$MARK \$*"; }
rigfail() {
	say "RIGFAIL \$*"
	dmesg | grep -iE 'kvm|svm|ccp|irqbypass|module|symbol' | tail -n 15 | sed 's/^/$MARK dmesg /'
	poweroff -f; sleep 10
}

grep -qw svm /proc/cpuinfo || rigfail "guest CPU has no svm flag (TCG_CPU=${TCG_CPU:-max})"
for m in ${mods[*]}; do
	args=; [ "\$m" = kvm-amd ] && args="${KVM_AMD_ARGS:-}"
	insmod /mod/\$m.ko \$args || rigfail "insmod \$m \$args failed"
done
[ -c /dev/kvm ] || mknod /dev/kvm c 10 232
[ -c /dev/kvm ] || rigfail "no /dev/kvm after loading kvm-amd"
grep -q '^1: uart:16550' /proc/tty/driver/serial || rigfail "no 16550 UART at ttyS1 for program output"
# raw: no newline translation or echo, so the output channel is 8-bit clean.
stty -F /dev/ttyS1 raw -echo || rigfail "stty on ttyS1 failed"
# For -v and failure reports: what the guest CPU offers and what kvm said.
say "cpu-flags \$(grep -m1 -ow -E 'svm|npt|nrip_save|vgif|lbrv|avic' /proc/cpuinfo | tr '\\n' ' ')"
dmesg | grep -iE 'kvm|svm' | sed 's/^/$MARK dmesg /'
dmesg -n 1
say "ready uptime=\$(up)"

cd /prog
t0=\$(up)
# Redirect inside the subshell, not on the command: ash would otherwise apply
# the redirection in this shell too and print its own "Segmentation fault"
# notice into the program's output. The subshell execs the program.
( exec </dev/null >/dev/ttyS1 2>&1; exec $cmd )
rc=\$?
t1=\$(up)
# tcsetattr(TCSADRAIN) waits until the UART has sent everything.
stty -F /dev/ttyS1 raw -echo
say "exit rc=\$rc start=\$t0 end=\$t1"
poweroff -f
sleep 10
EOF
	chmod 755 "$root/init"
	# Uncompressed newc archive: nothing to decompress under emulation.
	(cd "$root" && find . | cpio -o -H newc --quiet) >"$RUN/initramfs.cpio" ||
		die "cpio failed"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

VERBOSE=0
case "${1:-}" in
--check) check_prereqs; exit $(($? == 0 ? 0 : RIG_FAIL)) ;;
-h | --help) usage; exit 0 ;;
-v) VERBOSE=1; shift ;;
esac
[ $# -ge 1 ] || { usage; exit $RIG_FAIL; }
BIN=$1; shift

[ -f "$BIN" ] || die "'$BIN' is not a file"
[ -r "$BIN" ] || die "'$BIN' is not readable"
is_static "$BIN" || die "'$BIN' is dynamically linked (it has a program interpreter); the guest has no shared libraries — build it statically (gcc -static, musl-gcc -static, RUSTFLAGS='-C target-feature=+crt-static')"
check_prereqs quiet || die "prerequisites missing (see above)"

TIMEOUT=${TCG_TIMEOUT:-300}
MEM=${TCG_MEM:-1024}
[[ $TIMEOUT =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "TCG_TIMEOUT must be a number of seconds"
[[ $MEM =~ ^[0-9]+$ ]] || die "TCG_MEM must be a number of MiB"
WORKDIR=${TCG_WORKDIR:-${TMPDIR:-/tmp}/tenantvm-tcg}
mkdir -p "$WORKDIR/runs" || die "cannot create $WORKDIR"

RUN=$(mktemp -d "$WORKDIR/runs/run.XXXXXX") || die "cannot create a run dir in $WORKDIR/runs"
QEMU_PID=
cleanup() {
	[ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null
	if [ "${TCG_KEEP:-0}" = 1 ]; then echo "$ME: kept $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pick_boot_image
build_initramfs "$@"

: >"$RUN/console" >"$RUN/out"
T0=$EPOCHREALTIME
# -nodefaults: no VGA, NIC or default serial/parallel; the two -serial give
# ttyS0 (0x3f8, console) and ttyS1 (0x2f8, program output), each to a file.
timeout --kill-after=5 "$TIMEOUT" qemu-system-x86_64 \
	-nodefaults -display none -monitor none -no-reboot \
	-accel tcg -M pc -cpu "${TCG_CPU:-max}" -smp 1 -m "$MEM" \
	-serial "file:$RUN/console" -serial "file:$RUN/out" \
	-kernel "$BOOT_IMAGE" -initrd "$RUN/initramfs.cpio" \
	-append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off" \
	</dev/null >"$RUN/qemu.log" 2>&1 &
QEMU_PID=$!
wait $QEMU_PID
QEMU_RC=$?
QEMU_PID=
WALL=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')

tr -d '\r' <"$RUN/console" >"$RUN/console.txt"
if [ "$VERBOSE" = 1 ]; then
	echo "----- guest console ($BOOT_KIND, $(basename "$BOOT_IMAGE")) -----" >&2
	cat "$RUN/console.txt" >&2
	echo "----- end of guest console -----" >&2
fi
cat "$RUN/out"

if [ $QEMU_RC -eq 124 ] || [ $QEMU_RC -eq 137 ]; then
	echo "$ME: TIMEOUT after ${TIMEOUT}s (wall ${WALL}s)" >&2
	[ "$VERBOSE" = 1 ] || tail -n 5 "$RUN/console.txt" >&2
	exit $TIMEOUT_RC
fi
exitline=$(grep -a "^$MARK exit rc=" "$RUN/console.txt" | tail -n 1)
if [ -z "$exitline" ]; then
	reason=$(grep -a "^$MARK RIGFAIL" "$RUN/console.txt" | sed "s/^$MARK RIGFAIL //")
	echo "$ME: rig failure: ${reason:-guest ended without reporting an exit code} (qemu rc=$QEMU_RC, wall ${WALL}s)" >&2
	if [ "$VERBOSE" = 0 ]; then
		grep -a "^$MARK dmesg" "$RUN/console.txt" >&2
		[ -n "$reason" ] || tail -n 20 "$RUN/console.txt" >&2
	fi
	cat "$RUN/qemu.log" >&2
	exit $RIG_FAIL
fi
read -r rc t0 t1 < <(echo "$exitline" | sed -E 's/.*rc=([0-9]+) start=([0-9.]+) end=([0-9.]+).*/\1 \2 \3/')
ready=$(grep -a "^$MARK ready" "$RUN/console.txt" | sed 's/.*uptime=//')
prog=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
echo "$ME: exit=$rc wall=${WALL}s (guest ready at ${ready}s, program ${prog}s guest time; $BOOT_KIND $(basename "$BOOT_IMAGE"))" >&2
exit "$rc"
