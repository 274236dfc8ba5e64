/** What holds an image in the pool (pool/holders.ts): the holds eviction respects. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { evictionOrder, holdings } from '../../host-agent/src/pool/holders.js';
import { StateStore } from '../../host-agent/src/store/index.js';

test('an image waiting for its signature is busy, never evictable', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-holders-'));
  const store = StateStore.open(dir);
  t.after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const ref = { bucket: 'images', key: 'app.tar', versionId: null, eTag: '"e1"', size: 10 };
  const waiting = store.images.upsert(ref);
  store.images.awaitSignature(waiting.id, '2099-01-01T00:00:00.000Z', 'waiting for app.tar.sig');
  const failed = store.images.upsert({ ...ref, eTag: '"e0"' });
  store.images.fail(failed.id, 'SIGNATURE_INVALID', 'signed by another key');
  const held = holdings({ store }, { pins: [] }, { recordUse: false });
  const holdOf = (id: number): string | undefined => held.find((h) => h.image.id === id)?.hold;
  assert.equal(holdOf(waiting.id), 'busy');
  assert.equal(held.find((h) => h.image.id === waiting.id)?.why, 'awaiting-signature');
  assert.equal(holdOf(failed.id), 'failed');
  assert.deepEqual(
    evictionOrder(held).filter((h) => h.hold === 'evictable'),
    [],
  );
});
