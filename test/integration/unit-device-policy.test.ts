/**
 * The agent unit's device policy lets the unpack create device nodes in
 * images, and still denies opening them.
 *
 * systemd cannot run here (PID 1 is not systemd, so no systemd-run), but the
 * kernel's device controller that enforces DevicePolicy=/DeviceAllow= can:
 * this machine mounts the cgroup-v1 devices hierarchy. The test translates
 * the unit's own DevicePolicy= and DeviceAllow= lines into devices.allow
 * rules exactly as systemd 252 does on cgroup v1 (src/core/cgroup.c and
 * bpf-devices.c: "closed" = deny all, then the standard pseudo devices rwm
 * and char-pts rw; a path → its type and major:minor; char-NAME / block-NAME
 * → every major /proc/devices lists under NAME; "*" → every major), puts a
 * shell in that cgroup and runs mknod as the unpack does (xargs mknod).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const unit = readFileSync(
  fileURLToPath(new URL('../../../deploy/systemd/thinrelay-agent.service', import.meta.url)),
  'utf8',
);
const devicesRoot = '/sys/fs/cgroup/devices';
const skip =
  process.getuid?.() !== 0
    ? 'needs root'
    : !existsSync(join(devicesRoot, 'devices.allow'))
      ? 'no cgroup-v1 devices controller here (on a systemd host, use systemd-run with the unit properties)'
      : false;

/** systemd's DevicePolicy=closed set (cgroup.c: the "auto" devices). */
const closedDefaults = [
  'c 1:3 rwm',
  'c 1:5 rwm',
  'c 1:7 rwm',
  'c 1:8 rwm',
  'c 1:9 rwm',
  'c 5:0 rwm',
  'c 5:2 rwm',
];

function majorsNamed(type: 'c' | 'b', name: string): number[] {
  const text = readFileSync('/proc/devices', 'utf8');
  const [chars, blocks] = text.split('Block devices:');
  return [...(type === 'c' ? chars! : blocks!).matchAll(/^\s*(\d+) (\S+)$/gm)]
    .filter((m) => m[2] === name)
    .map((m) => Number(m[1]));
}

/** The unit's DevicePolicy/DeviceAllow as cgroup-v1 devices.allow rules. */
function rulesOf(unitText: string): string[] {
  assert.match(unitText, /^DevicePolicy=closed$/m);
  const rules = [...closedDefaults, ...majorsNamed('c', 'pts').map((m) => `c ${m}:* rw`)];
  for (const [, what, perms] of unitText.matchAll(/^DeviceAllow=(\S+)(?: (\S+))?$/gm)) {
    const acc = perms ?? 'rwm';
    const group = /^(char|block)-(.+)$/.exec(what!);
    if (group !== null) {
      const type = group[1] === 'char' ? 'c' : 'b';
      if (group[2] === '*') rules.push(`${type} *:* ${acc}`);
      // A group this kernel does not list (no device-mapper here) adds nothing, as in systemd.
      else rules.push(...majorsNamed(type, group[2]!).map((m) => `${type} ${m}:* ${acc}`));
      continue;
    }
    if (!existsSync(what!)) continue;
    const st = statSync(what!);
    const rdev = st.rdev;
    const major = (rdev >> 8) & 0xfff;
    const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    rules.push(`${st.isCharacterDevice() ? 'c' : 'b'} ${major}:${minor} ${acc}`);
  }
  return rules;
}

/** Runs the probe in a fresh devices cgroup holding `rules`; returns its report lines. */
function probe(rules: string[]): string[] {
  const cg = join(devicesRoot, `thinrelay-test-${process.pid}-${Date.now()}`);
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-devpolicy-'));
  mkdirSync(cg);
  try {
    writeFileSync(join(cg, 'devices.deny'), 'a');
    for (const r of rules) writeFileSync(join(cg, 'devices.allow'), r);
    const script = `
      echo $$ > "$1/cgroup.procs"
      # As the unpack does: NUL-separated "path type major minor" through xargs mknod.
      printf '%s\\0' "$2/console" c 5 1 "$2/ttyS0" c 4 64 "$2/sda" b 8 0 "$2/kmsg" c 1 11 "$2/odd" c 511 7 |
        xargs -0 -n 4 mknod -- 2>/dev/null
      for n in console ttyS0 sda kmsg odd; do [ -e "$2/$n" ] && echo "made $n" || echo "denied $n"; done
      cat "$2/kmsg" >/dev/null 2>&1 </dev/null && echo "opened kmsg" || echo "cannot open kmsg"
      ( exec 3<>/dev/loop-control ) 2>/dev/null && echo "opened loop-control" || echo "cannot open loop-control"
    `;
    const r = spawnSync('sh', ['-c', script, 'probe', cg, dir], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim().split('\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmdirSync(cg);
  }
}

test(
  "the unit's device policy: the unpack creates any device node, opens none it was not given",
  { skip },
  () => {
    const rules = rulesOf(unit);
    assert.ok(rules.includes('c *:* m') && rules.includes('b *:* m'), rules.join('\n'));
    assert.deepEqual(probe(rules), [
      'made console',
      'made ttyS0',
      'made sda',
      'made kmsg',
      'made odd',
      'cannot open kmsg',
      'opened loop-control',
    ]);
  },
);

test(
  'without its DeviceAllow=char-*/block-* m lines the same unpack cannot create them',
  { skip },
  () => {
    const without = unit.replace(/^DeviceAllow=(char|block)-\* m$/gm, '');
    const report = probe(rulesOf(without));
    for (const n of ['console', 'ttyS0', 'sda', 'kmsg', 'odd'])
      assert.ok(report.includes(`denied ${n}`), report.join('\n'));
    assert.ok(report.includes('opened loop-control'));
  },
);
