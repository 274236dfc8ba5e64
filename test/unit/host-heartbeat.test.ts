/**
 * The heartbeat's pool figures: none (null, `-` in `fleet hosts`) while the
 * host has no pool yet, measured once it has one — never a `0 B 0%` that
 * images built before the next beat would contradict.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { poolUsage } from '../../host-agent/src/fleet/member/host-heartbeat.js';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';

test('a fresh host reports no pool usage; a host with a pool reports its figures', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-beat-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const backend = new LoopBackend({ stateDir: join(dir, 'state'), reserveBytes: 0 });
  assert.equal(await poolUsage(backend), null, 'no pool yet: not measured');
  await backend.createPool();
  const usage = await poolUsage(backend);
  assert.ok(usage !== null && usage.dataTotalBytes > 0, JSON.stringify(usage));
  assert.equal(usage.dataUsedBytes, 0);
});
