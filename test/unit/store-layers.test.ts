/**
 * Migrations 5 (layers as blobs named by chain ID) and 7 (flat tars keyed
 * apart from layers) on state dirs written by earlier versions, and the blob
 * state machine.
 */
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { databasePath } from '../../host-agent/src/store/db.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { migrations } from '../../host-agent/src/store/migrations.js';

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-store5-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const now = '2026-11-30T00:00:00.000Z';

test('a version-4 state dir migrates: flat images become one-layer images, configs move to the image', (t) => {
  const dir = tempDir(t);
  const old = new Database(databasePath(dir));
  for (const m of migrations.slice(0, 4)) old.exec(m);
  old.pragma('user_version = 4');
  const hex = 'ab'.repeat(32);
  const insertObject = old.prepare(
    `INSERT INTO storage_objects (kind, backend, size_bytes, state, created_at, updated_at)
     VALUES ('volume', 'loop', 1, 'sealed', ?, ?)`,
  );
  const insertBlob = old.prepare(
    `INSERT INTO blobs (sha256, size, compression, status, volume_id, image_config, created_at, updated_at)
     VALUES (?, 1, ?, 'ready', ?, ?, ?, ?)`,
  );
  const insertImage = old.prepare(
    `INSERT INTO images (bucket, key, etag, size, status, created_at, updated_at)
     VALUES ('b', ?, ?, 1, 'ready', ?, ?)`,
  );
  const link = old.prepare(
    `INSERT INTO image_blobs (image_id, position, blob_id) VALUES (?, 0, ?)`,
  );
  // A plain flat tar, a gzip flat tar and a (flattened) container image.
  const rows: [string, string, string | null][] = [
    [hex, 'none', null],
    ['cd'.repeat(32), 'gzip', null],
    ['ef'.repeat(32), 'none', '{"format":"oci-archive","config":{"cmd":["x"]}}'],
  ];
  rows.forEach(([sha, compression, config], i) => {
    const vol = Number(insertObject.run(now, now).lastInsertRowid);
    const blob = Number(insertBlob.run(sha, compression, vol, config, now, now).lastInsertRowid);
    const image = Number(insertImage.run(`k${i}`, `"e${i}"`, now, now).lastInsertRowid);
    link.run(image, blob);
  });
  old.close();

  const store = StateStore.open(dir);
  t.after(() => store.close());
  const [plain, gz, container] = [1, 2, 3].map((id) => store.blobs.get(id)!);
  assert.equal(
    plain!.chain_id,
    `flat:sha256:${hex}`,
    "an uncompressed flat tar's sha256 is its diff_id; its key says it was unpacked flat (migration 7)",
  );
  assert.equal(plain!.diff_id, `sha256:${hex}`);
  assert.equal(plain!.depth, 1);
  assert.equal(store.blobs.readyByChain(`flat:sha256:${hex}`)?.id, 1);
  assert.equal(store.blobs.readyByChain(`sha256:${hex}`), undefined);
  assert.equal(gz!.chain_id, null, 'a compressed one has no known diff_id');
  assert.equal(container!.chain_id, null, 'a flattened container image is no layer of a chain');
  assert.equal(store.images.configJson(3), container!.image_config);
  assert.equal(store.images.configJson(1), null);
  assert.equal(store.images.topBlobId(3), 3, 'the one volume is the top layer');
  assert.deepEqual(
    store.images.layers(1).map((l) => [l.position, l.chain_id, l.shared_by]),
    [[0, `flat:sha256:${hex}`, 1]],
  );
});

test('a version-6 state dir migrates: flat rows get the flat: key, layers keep their chain IDs', (t) => {
  const dir = tempDir(t);
  const old = new Database(databasePath(dir));
  for (const m of migrations.slice(0, 6)) old.exec(m);
  old.pragma('user_version = 6');
  const flatHex = 'ab'.repeat(32);
  const insertObject = old.prepare(
    `INSERT INTO storage_objects (kind, backend, size_bytes, state, created_at, updated_at)
     VALUES ('volume', 'loop', 1, 'sealed', ?, ?)`,
  );
  const insertBlob = old.prepare(
    `INSERT INTO blobs (sha256, size, compression, status, volume_id, chain_id, diff_id, depth, created_at, updated_at)
     VALUES (?, 1, ?, 'ready', ?, ?, ?, 1, ?, ?)`,
  );
  const vol = (): number => Number(insertObject.run(now, now).lastInsertRowid);
  // A flat tar as version 6 stored it, a container base layer, a gzip flat tar (no chain ID).
  insertBlob.run(flatHex, 'none', vol(), `sha256:${flatHex}`, `sha256:${flatHex}`, now, now);
  insertBlob.run(
    null,
    'gzip',
    vol(),
    `sha256:${'cd'.repeat(32)}`,
    `sha256:${'ef'.repeat(32)}`,
    now,
    now,
  );
  insertBlob.run('12'.repeat(32), 'gzip', vol(), null, null, now, now);
  old.close();

  const store = StateStore.open(dir);
  t.after(() => store.close());
  assert.deepEqual(
    [1, 2, 3].map((id) => store.blobs.get(id)!.chain_id),
    [`flat:sha256:${flatHex}`, `sha256:${'cd'.repeat(32)}`, null],
  );
  assert.equal(store.blobs.get(1)!.diff_id, `sha256:${flatHex}`, 'the diff_id is unchanged');
  // A layer with the flat tar's bytes is another volume now: both may be ready at once.
  const layer = store.blobs.create(
    store.objects.createIntent({ kind: 'volume', backend: 'loop', sizeBytes: 1 }, 'o').id,
    null,
    { chainId: `sha256:${flatHex}`, diffId: `sha256:${flatHex}`, parentBlobId: null, depth: 1 },
  );
  store.blobs.setStatus(layer.id, 'ready');
  assert.equal(store.blobs.readyByChain(`sha256:${flatHex}`)?.id, layer.id);
  assert.equal(store.blobs.readyByChain(`flat:sha256:${flatHex}`)?.id, 1);
});

test('blobs: one ready layer per chain ID, transitions checked, unused layers listed top first', (t) => {
  const dir = tempDir(t);
  const store = StateStore.open(dir);
  t.after(() => store.close());
  const vol = (): number =>
    store.objects.createIntent({ kind: 'volume', backend: 'loop', sizeBytes: 1 }, 'o').id;
  const base = store.blobs.create(vol(), null, {
    chainId: 'sha256:c1',
    diffId: 'sha256:d1',
    parentBlobId: null,
    depth: 1,
  });
  const top = store.blobs.create(vol(), null, {
    chainId: 'sha256:c2',
    diffId: 'sha256:d2',
    parentBlobId: base.id,
    depth: 2,
  });
  const twin = store.blobs.create(vol(), null, {
    chainId: 'sha256:c1',
    diffId: 'sha256:d1',
    parentBlobId: null,
    depth: 1,
  });
  assert.deepEqual(
    store.blobs.buildingByChain('sha256:c1').map((b) => b.id),
    [base.id, twin.id],
  );
  store.blobs.setStatus(base.id, 'ready');
  store.blobs.setStatus(top.id, 'ready');
  assert.throws(() => store.blobs.setStatus(twin.id, 'ready'), /UNIQUE/);
  store.blobs.setStatus(twin.id, 'removed');
  assert.throws(() => store.blobs.setStatus(twin.id, 'ready'), /invalid blob transition/);
  const image = store.images.upsert({
    bucket: 'b',
    key: 'k',
    versionId: null,
    eTag: '"e"',
    size: 1,
  });
  store.images.linkBlob(image.id, 0, base.id);
  store.images.linkBlob(image.id, 1, top.id);
  assert.equal(store.images.topBlobId(image.id), top.id);
  assert.deepEqual(store.blobs.listUnused(), []);
  store.images.setStatus(image.id, 'removed');
  assert.deepEqual(
    store.blobs.listUnused().map((b) => b.id),
    [top.id, base.id],
    'the layer above first',
  );
});
