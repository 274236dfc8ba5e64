/**
 * `npm run demo` (its built entry, as a separate process group, as a shell
 * runs it): the whole run tells the story it promises, the DLQ and redrive
 * steps included; Ctrl-C (SIGINT to the whole group, as a terminal sends it)
 * at an early step and during step 4 exits 130, SIGTERM to the demo alone
 * mid-unpack exits 143, with no crash; neither leaves a
 * process, loop device, mount or work dir behind.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRootAndTools } from '../helpers/root.js';
import { until } from '../helpers/until.js';

const demoEntry = fileURLToPath(new URL('../../host-agent/src/demo/demo.js', import.meta.url));
const skip = needsRootAndTools(['losetup', 'mkfs.ext4', 'mount']);

interface DemoRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  /** The demo's work dir, as its step 1 prints it. */
  work: string;
  /** Whether any process of the demo's process group (it, its agents, its CLI calls) is left. */
  groupAlive: () => boolean;
}

/**
 * Runs the demo; with `interruptAt`, once its output matches, sends SIGINT to
 * its process group (a terminal's Ctrl-C) or SIGTERM to it alone (a service manager).
 */
async function runDemo(
  t: TestContext,
  interruptAt?: RegExp,
  how: 'SIGINT to the group' | 'SIGTERM to the demo' = 'SIGINT to the group',
): Promise<DemoRun> {
  const child = spawn(process.execPath, [demoEntry], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pgid = child.pid!;
  const groupAlive = (): boolean => {
    try {
      process.kill(-pgid, 0);
      return true;
    } catch {
      return false;
    }
  };
  let out = '';
  let work = '';
  t.after(() => {
    if (groupAlive()) process.kill(-pgid, 'SIGKILL');
    if (work !== '' && existsSync(work)) releaseStateDir(work);
  });
  let interrupted = false;
  const onData = (d: Buffer): void => {
    out += d.toString();
    work ||= /work dir (\S+);/.exec(out)?.[1] ?? '';
    if (interruptAt !== undefined && !interrupted && interruptAt.test(out)) {
      interrupted = true;
      if (how === 'SIGINT to the group') process.kill(-pgid, 'SIGINT');
      else process.kill(pgid, 'SIGTERM');
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
    child.on('close', (c, s) => resolve([c, s])),
  );
  if (interruptAt !== undefined)
    assert.ok(interrupted, `never saw ${String(interruptAt)}:\n${out}`);
  assert.notEqual(work, '', `the demo printed no work dir:\n${out}`);
  return { code, signal, out, work, groupAlive };
}

/** Nothing of the demo is left: no process of its group, loop device, mount or work dir. */
async function assertNothingLeft(run: DemoRun): Promise<void> {
  // Its agents are in its process group; they are waited for before it exits.
  await until('the demo process group to be gone', () => Promise.resolve(!run.groupAlive()), 5_000);
  const inv = hostInventory(run.work);
  assert.deepEqual(inv.loops, [], 'no loop device backed by a file under the work dir');
  assert.deepEqual(inv.mounts, [], 'no mount under the work dir');
  assert.equal(existsSync(run.work), false, `work dir ${run.work} removed`);
}

test('the demo runs the fleet, DLQ and redrive steps and cleans up', { skip }, async (t) => {
  const run = await runDemo(t);
  assert.equal(run.code, 0, run.out);
  const out = run.out;
  // The hostile image's message lands in host-a's DLQ; `failed` and `dlq peek`
  // (no --dlq-url: from the registration) show it.
  const peek = out.slice(out.indexOf('$ thinrelay dlq peek'));
  assert.match(out, /\$ thinrelay failed\n.*\n.*images\/hostile\.tar\s+ARCHIVE_PATH_ESCAPE/);
  assert.match(peek, /thinrelay-dlq-default-host-a: about 1 message\(s\) waiting; 1 seen/);
  assert.match(peek, /image\.put\s+thinrelay-demo\s+images\/hostile\.tar/);
  // The redrive moves it back to host-a's queue, and the fixed image is ready everywhere.
  const redrive = out.slice(out.indexOf('$ thinrelay redrive'));
  assert.match(redrive, /^\s+COMPLETED: moved 1 of 1 message\(s\) .*thinrelay-dlq-default-host-a/m);
  assert.match(redrive, /^\s+\(exit 0\)/m);
  const waitAfter = redrive.slice(redrive.indexOf('$ thinrelay fleet wait images/hostile.tar'));
  assert.match(waitAfter, /^\s+\{"key":"images\/hostile\.tar".*"result":"ready"\}\n\s+\(exit 0\)/m);
  assert.match(out, /done in /);
  assert.doesNotMatch(out, /SyntaxError|TypeError|Unhandled/);
  await assertNothingLeft(run);
});

for (const [what, at] of [
  ['while the agents register (step 2)', /\[2\/9\]/],
  ['during step 4', /\[4\/9\]/],
] as const) {
  test(`Ctrl-C ${what}: exit 130, no crash, nothing left`, { skip }, async (t) => {
    const run = await runDemo(t, at);
    assert.equal(run.code, 130, run.out);
    assert.doesNotMatch(run.out, /SyntaxError|Unexpected end of JSON/);
    assert.doesNotMatch(run.out, /done in /, 'it stopped where it was interrupted');
    await assertNothingLeft(run);
  });
}

test(
  'SIGTERM to the demo alone while the agents unpack (step 3): exit 143, nothing left',
  { skip },
  async (t) => {
    // Its agents and CLI calls get no signal from outside: the demo stops them itself.
    const run = await runDemo(t, /host-a unpacking images\/sample-rootfs/, 'SIGTERM to the demo');
    assert.equal(run.code, 143, run.out);
    assert.doesNotMatch(run.out, /SyntaxError|Unexpected end of JSON/);
    await assertNothingLeft(run);
  },
);
