import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ExitCode, InternalError } from '../../host-agent/src/errors.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { openChanges } from '../../host-agent/src/store/pool-journal.js';
import type { ImageRow } from '../../host-agent/src/store/images.js';
import { schemaVersion } from '../../host-agent/src/store/db.js';
import { migrations } from '../../host-agent/src/store/migrations.js';
import {
  currentOwner,
  isOwnerAlive,
  registerWorker,
  releaseWorker,
} from '../../host-agent/src/store/owner.js';
import { reservePath } from '../../host-agent/src/store/space-reserve.js';
import { camelKeys } from '../../host-agent/src/cli/output.js';

function tempStore(t: { after(fn: () => void): void }): { store: StateStore; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-store-'));
  const store = StateStore.open(dir);
  t.after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { store, dir };
}

const ref = { bucket: 'images', key: 'a/b.tar', versionId: null, eTag: '"e1"', size: 10 };

test('migrations run once, to the latest version, with WAL and foreign keys', (t) => {
  const { store, dir } = tempStore(t);
  assert.equal(schemaVersion(store.db), migrations.length);
  assert.equal(store.db.pragma('journal_mode', { simple: true }), 'wal');
  assert.equal(store.db.pragma('foreign_keys', { simple: true }), 1);
  const again = StateStore.open(dir);
  assert.equal(schemaVersion(again.db), migrations.length);
  again.close();
  assert.deepEqual(store.integrityCheck(), []);
});

test('an image is identified by bucket, key and ETag', (t) => {
  const { store } = tempStore(t);
  const a = store.images.upsert(ref);
  assert.equal(store.images.upsert(ref).id, a.id);
  const b = store.images.upsert({ ...ref, eTag: '"e2"' });
  assert.notEqual(b.id, a.id);
  assert.equal(store.images.latestByKey('a/b.tar')?.id, b.id);
});

test('every job transition bumps the serial; invalid transitions are refused', (t) => {
  const { store } = tempStore(t);
  const image = store.images.upsert(ref);
  const job = store.jobs.create(image.id, currentOwner(), ['one', 'two']);
  const serial0 = job.serial;
  store.jobs.setStep(job.id, 0, 'running');
  store.jobs.setStatus(job.id, 'downloading');
  store.jobs.setStep(job.id, 0, 'complete', { detail: { x: 1 } });
  const after = store.jobs.get(job.id)!;
  assert.equal(after.serial, serial0 + 3);
  const steps = store.jobs.steps(job.id);
  assert.equal(steps[0]?.status, 'complete');
  assert.equal(steps[0]?.attempts, 1);
  assert.deepEqual(JSON.parse(steps[0]?.detail ?? 'null'), { x: 1 });
  assert.ok(steps[0]?.started_at !== null && steps[0]?.ended_at !== null);
  assert.throws(
    () => store.jobs.setStep(job.id, 0, 'running'),
    /invalid step transition complete → running/,
  );
  store.jobs.setStatus(job.id, 'complete');
  assert.throws(() => store.jobs.setStatus(job.id, 'downloading'), /invalid job transition/);
});

test('a broken store invariant is a bug, said as one: INTERNAL (exit 70), never an image or host fault', (t) => {
  const { store } = tempStore(t);
  const image = store.images.upsert(ref);
  const job = store.jobs.create(image.id, currentOwner(), ['one']);
  const internal = (code: string, message: RegExp) => (err: unknown) =>
    err instanceof InternalError &&
    err.code === code &&
    err.exitCode === ExitCode.internal &&
    message.test(err.message);
  assert.throws(
    () => store.images.setStatus(image.id, 'ready'),
    internal('INTERNAL', /invalid image transition pending → ready/),
  );
  assert.throws(
    () => store.images.setStatus(image.id + 100, 'failed'),
    internal('INTERNAL', /image \d+ does not exist/),
  );
  assert.throws(
    () => store.jobs.setStep(job.id, 5, 'running'),
    internal('INTERNAL', /job \d+ has no step 5/),
  );
  assert.throws(
    () => store.blobs.setStatus(999, 'ready'),
    internal('INTERNAL', /blob 999 does not exist/),
  );
  assert.throws(
    () => store.objects.transition(999, 'removing'),
    internal('INTERNAL', /storage object 999 does not exist/),
  );
  assert.throws(
    () =>
      store.poolJournal.open('p', 'me:1:x', {
        op: 'delete',
        thinId: 1,
        originId: null,
        purpose: 't',
      }),
    internal('INTERNAL', /pool p is not held by me:1:x/),
  );
});

test('pool journal: a group of changes is journaled whole; one change reads as before', (t) => {
  const { store } = tempStore(t);
  const owner = 'me:1:x';
  store.poolJournal.adopt('p', 7);
  assert.equal(store.poolJournal.claim('p', null, owner), true);
  const one = { op: 'create_snap' as const, thinId: 5, originId: 1, purpose: 'snapshot a of b' };
  store.poolJournal.open('p', owner, one);
  const row = store.poolJournal.get('p')!;
  assert.equal(row.open_purpose, 'snapshot a of b', 'a single change keeps its plain columns');
  assert.deepEqual(openChanges(row), [one]);
  store.poolJournal.close('p', owner, 7);
  assert.deepEqual(openChanges(store.poolJournal.get('p')!), []);

  const group = [
    one,
    { op: 'create_snap' as const, thinId: 6, originId: 1, purpose: 'snapshot c of b' },
    { op: 'delete' as const, thinId: 3, originId: null, purpose: 'remove d' },
  ];
  store.poolJournal.open('p', owner, group);
  const open = store.poolJournal.get('p')!;
  assert.equal(open.open_op, 'create_snap');
  assert.equal(open.open_thin_id, 5, 'the columns hold the first member');
  assert.deepEqual(openChanges(open), group, 'every member, in order');
  assert.throws(
    () => openChanges({ ...open, open_purpose: 'group:[{"op":"rm -rf"}]' }),
    (err: unknown) => err instanceof InternalError && /unreadable group/.test(err.message),
  );
  store.poolJournal.close('p', owner, 8);
  assert.equal(store.poolJournal.get('p')!.transaction_id, 8);
});

test('at most one open job per image', (t) => {
  const { store } = tempStore(t);
  const image = store.images.upsert(ref);
  store.jobs.create(image.id, currentOwner(), ['one']);
  assert.throws(
    () => store.jobs.create(image.id, currentOwner(), ['one']),
    /UNIQUE constraint failed/,
  );
});

test('storage object intents: ids never reused, transitions checked, claim is compare-and-swap', (t) => {
  const { store } = tempStore(t);
  const a = store.objects.createIntent(
    { kind: 'volume', backend: 'loop', sizeBytes: 1 },
    'dead:1:x',
  );
  store.objects.transition(a.id, 'removing');
  store.objects.transition(a.id, 'removed');
  store.db.prepare('DELETE FROM storage_objects WHERE id = ?').run(a.id);
  const b = store.objects.createIntent(
    { kind: 'volume', backend: 'loop', sizeBytes: 1 },
    'dead:1:x',
  );
  assert.ok(b.id > a.id, 'AUTOINCREMENT never hands out an id twice');
  assert.throws(
    () => store.objects.transition(b.id, 'active'),
    /invalid storage object transition creating → active/,
  );
  assert.equal(store.objects.claim(b.id, 'dead:1:x', 'me:1:x'), true);
  assert.equal(store.objects.claim(b.id, 'dead:1:x', 'other:1:x'), false);
});

test('owner liveness: this process is alive, a killed one is not, a reboot kills all', async () => {
  assert.equal(isOwnerAlive(currentOwner()), true);
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
  await new Promise((r) => child.once('spawn', r));
  const [, start, boot] = currentOwner().split(':');
  assert.ok(start !== undefined && boot !== undefined);
  const stat = (await import('node:fs')).readFileSync(`/proc/${child.pid}/stat`, 'utf8');
  const childStart = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  const childOwner = `${child.pid}:${childStart}:${boot}`;
  assert.equal(isOwnerAlive(childOwner), true);
  assert.equal(isOwnerAlive(`${child.pid}:${childStart}:another-boot`), false);
  assert.equal(isOwnerAlive(`${child.pid}:1:${boot}`), false, 'pid reuse: start time differs');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  assert.equal(isOwnerAlive(childOwner), false);
  assert.equal(isOwnerAlive(null), false);
});

test('online backup produces a consistent copy', async (t) => {
  const { store, dir } = tempStore(t);
  store.images.upsert(ref);
  const file = join(dir, 'backup.db');
  await store.backup(file);
  const copy = new (await import('better-sqlite3')).default(file, { readonly: true });
  assert.equal((copy.prepare('SELECT count(*) AS n FROM images').get() as { n: number }).n, 1);
  copy.close();
});

test('images.listJson is the same data as images.list (camelCase), with interrupted ids marked', (t) => {
  const { store } = tempStore(t);
  const a = store.images.upsert(ref);
  const b = store.images.upsert({ ...ref, key: 'c/d.tar', versionId: 'v1' });
  store.images.setStatus(b.id, 'failed', {
    errorCode: 'ARCHIVE_EMPTY',
    errorMessage: 'empty "quoted"',
  });
  const c = store.images.upsert({ ...ref, key: 'gone.tar' });
  store.images.setStatus(c.id, 'removed');
  // `pinned` is printed as a boolean: the pin in force (the image's own, or its key's);
  // the ETag as JSON for scripts gives it, without S3's quotes.
  const asJson = (r: ImageRow) => ({
    ...camelKeys(r),
    pinned: r.pinned === 1,
    etag: r.etag.replace(/^"|"$/g, ''),
  });
  assert.deepEqual(JSON.parse(store.images.listJson()), store.images.list().map(asJson));
  assert.deepEqual(
    JSON.parse(store.images.listJson({ includeRemoved: true })),
    store.images.list({ includeRemoved: true }).map(asJson),
  );
  const marked = JSON.parse(store.images.listJson({ interrupted: [a.id] })) as {
    id: number;
    status: string;
  }[];
  assert.deepEqual(
    marked.map((r) => [r.id, r.status]),
    [
      [a.id, 'interrupted'],
      [b.id, 'failed'],
    ],
  );
});

test("a daemon worker's owner is alive only while registered, even though its process lives", () => {
  const worker = `${currentOwner()}:7`;
  assert.equal(isOwnerAlive(worker), false, 'an ended worker left work to recover');
  registerWorker(worker);
  assert.equal(isOwnerAlive(worker), true);
  releaseWorker(worker);
  assert.equal(isOwnerAlive(worker), false);
  assert.equal(isOwnerAlive(currentOwner()), true, 'the process itself stays alive');
});

test("a key's applied sequencer never moves backwards", (t) => {
  const { store } = tempStore(t);
  const e = { bucket: 'b', key: 'k', kind: 'image.put' as const, imageId: null };
  assert.equal(store.events.markApplied({ ...e, sequencer: '0200', kind: 'image.delete' }), true);
  // A second writer applying an older put afterwards: refused, 0200 stays.
  assert.equal(store.events.markApplied({ ...e, sequencer: '0100' }), false);
  assert.equal(store.events.markApplied({ ...e, sequencer: '0200' }), false);
  assert.equal(store.events.applied('b', 'k')?.sequencer, '0200');
  assert.equal(store.events.applied('b', 'k')?.kind, 'image.delete');
  // Right-padded comparison: 03 is newer than 0200.
  assert.equal(store.events.markApplied({ ...e, sequencer: '03' }), true);
  assert.equal(store.events.applied('b', 'k')?.sequencer, '03');
});

test('ids are allocated above a name found in the pool (a restored backup)', (t) => {
  const { store } = tempStore(t);
  const o = { kind: 'volume' as const, backend: 'loop', sizeBytes: 1 };
  const first = store.objects.createIntent(o, currentOwner());
  assert.equal(store.objects.reserveIdsThrough(first.id), false, 'nothing to do');
  assert.equal(store.objects.reserveIdsThrough(first.id + 5), true);
  assert.equal(store.objects.createIntent(o, currentOwner()).id, first.id + 6);
});

test('a full filesystem: the space reserve is given back and the transaction retried', (t) => {
  const { store, dir } = tempStore(t);
  assert.ok(existsSync(reservePath(dir)), 'the reserve exists once the database is open');
  let calls = 0;
  const result = store.tx(() => {
    if (++calls === 1)
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    return 'recorded';
  });
  assert.equal(result, 'recorded');
  assert.equal(calls, 2);
  assert.equal(existsSync(reservePath(dir)), false, 'the reserve was released');
  // No reserve left: the next full-disk error is the caller's.
  assert.throws(
    () =>
      store.tx(() => {
        throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
      }),
    /disk is full/,
  );
});
