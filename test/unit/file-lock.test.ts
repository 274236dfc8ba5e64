/**
 * FileLock between processes: one holder at a time, and processes that
 * start polling together never deadlock (in SQLite's exclusive locking mode
 * a failed BEGIN EXCLUSIVE kept its partial locks, and about one round in
 * five of four racing processes hung).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FileLock } from '../../host-agent/src/store/file-lock.js';

const moduleUrl = new URL('../../host-agent/src/store/file-lock.js', import.meta.url).href;

/**
 * A child that polls for the lock, holds it 20 ms, then prints when it held it.
 * Once loaded it says `ready` and reads the start instant from stdin: the parent
 * sends it when all four are ready, so none waits a fixed second to load.
 */
const childScript = `
import { FileLock } from ${JSON.stringify(moduleUrl)};
const lock = new FileLock(process.argv[1]);
console.log('ready');
const startAt = await new Promise((r) => process.stdin.once('data', (b) => r(Number(String(b)))));
process.stdin.destroy();
// Every racer starts at the same instant, so their lock steps interleave.
while (Date.now() < startAt);
const deadline = Date.now() + 5000;
while (!lock.tryAcquire()) {
  if (Date.now() > deadline) { console.log('TIMEOUT'); process.exit(3); }
  await new Promise((r) => setTimeout(r, 1));
}
const from = Date.now();
await new Promise((r) => setTimeout(r, 20));
const to = Date.now();
lock.close();
console.log(JSON.stringify({ from, to }));
`;

interface Racer {
  /** Resolves once the child has loaded FileLock and waits for its start instant. */
  ready: Promise<void>;
  start(at: number): void;
  done: Promise<{ code: number | null; out: string }>;
}

function racer(path: string): Racer {
  const child = spawn(process.execPath, ['--input-type=module', '-e', childScript, path], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((r) => (onReady = r));
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString();
    if (out.startsWith('ready\n')) onReady();
  });
  const done = new Promise<{ code: number | null; out: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      onReady(); // a child that died before `ready` is reported by its exit code
      resolve({ code, out: out.replace(/^ready\n/, '') });
    });
  });
  return { ready, start: (at) => child.stdin.end(`${at}\n`), done };
}

test('a second FileLock waits while the first holds it, and gets it once the first closes', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-file-lock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const first = new FileLock(join(dir, 'x.lock'));
  const second = new FileLock(join(dir, 'x.lock'));
  try {
    assert.equal(first.tryAcquire(), true);
    assert.equal(second.tryAcquire(), false);
    assert.equal(second.tryAcquire(), false);
    first.close();
    assert.equal(second.tryAcquire(), true);
  } finally {
    first.close();
    second.close();
  }
});

test('four processes racing for one lock, 15 rounds: each gets it, one at a time, none hangs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-file-lock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'race.lock');
  for (let round = 0; round < 15; round++) {
    const racers = [1, 2, 3, 4].map(() => racer(path));
    await Promise.all(racers.map((r) => r.ready));
    const startAt = Date.now() + 50;
    for (const r of racers) r.start(startAt);
    const results = await Promise.all(racers.map((r) => r.done));
    for (const r of results)
      assert.equal(r.code, 0, `round ${round}: a racer said ${r.out.trim()}`);
    const spans = results
      .map((r) => JSON.parse(r.out) as { from: number; to: number })
      .sort((a, b) => a.from - b.from);
    for (let i = 1; i < spans.length; i++) {
      assert.ok(
        spans[i]!.from >= spans[i - 1]!.to,
        `round ${round}: two racers held the lock at once`,
      );
    }
  }
});
