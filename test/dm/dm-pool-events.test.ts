/**
 * The thin pool's low-water event (in the VM): the agent waits on the pool's
 * event counter (`dmsetup wait`) and runs a pool pass when it moves. A wait
 * with nothing happening times out (false); writing past the low-water mark
 * wakes it (true); aborting kills the wait.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../host-agent/src/config.js';
import { silentLogger } from '../../host-agent/src/log.js';
import type { ObjectSpec } from '../../host-agent/src/storage/backend.js';
import { DevmapperBackend } from '../../host-agent/src/storage/devmapper/devmapper-backend.js';
import { createBackend } from '../../host-agent/src/storage/index.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { currentOwner } from '../../host-agent/src/store/owner.js';
import { needsRoot } from '../helpers/root.js';
import { devmapperEnv, freshStateDir, releaseDmStateDir } from './dm-host.js';

const mib = 1024 ** 2;

describe('thin pool events', { skip: needsRoot }, () => {
  let stateDir: string;
  let backend: DevmapperBackend;
  let store: StateStore;
  const volume: ObjectSpec = {
    kind: 'volume',
    name: 'vol-00000001',
    sizeBytes: 128 * mib,
    thinId: 1,
  };

  before(async () => {
    stateDir = freshStateDir('thinrelay-dmev-');
    store = StateStore.open(stateDir);
    // A 64 MiB pool whose low-water mark is 16 MiB (32768 sectors) free.
    const config = loadConfig(
      {},
      { ...devmapperEnv(stateDir), THINRELAY_DM_LOW_WATER_SECTORS: '32768' },
    );
    const b = createBackend(config, { store, owner: currentOwner(), logger: silentLogger });
    assert.ok(b instanceof DevmapperBackend);
    backend = b;
    await backend.createPool({ sizeBytes: 64 * mib });
    await backend.createVolume(volume);
  });
  after(async () => {
    await backend?.remove(volume).catch(() => undefined);
    store?.close();
    releaseDmStateDir(stateDir);
  });

  test('no event: the wait times out; past the low-water mark: it wakes', async () => {
    const idle = await backend.waitForPoolEvent({
      signal: new AbortController().signal,
      timeoutMs: 1500,
    });
    assert.equal(idle, false, 'nothing crossed: no event');

    const woken = backend.waitForPoolEvent({
      signal: new AbortController().signal,
      timeoutMs: 120_000,
    });
    const { mountpoint } = await backend.mountForUnpack(volume);
    // 52 MiB written into the 64 MiB pool: fewer than 16 MiB left.
    execFileSync('dd', ['if=/dev/urandom', `of=${join(mountpoint, 'fill')}`, 'bs=1M', 'count=52'], {
      stdio: 'ignore',
    });
    await backend.flush(volume);
    const started = Date.now();
    assert.equal(await woken, true, 'the low-water event woke the wait');
    assert.ok(Date.now() - started < 60_000);
    await backend.seal(volume);
  });

  test('aborting kills the wait', async () => {
    const ac = new AbortController();
    const waiting = backend.waitForPoolEvent({ signal: ac.signal, timeoutMs: 120_000 });
    setTimeout(() => ac.abort(new Error('stop')), 300);
    await assert.rejects(waiting);
    // The killed child is reaped asynchronously: give it a moment.
    await new Promise((r) => setTimeout(r, 300));
    const left = execFileSync('sh', ['-c', 'pgrep -x dmsetup || true'], { encoding: 'utf8' });
    assert.equal(left.trim(), '', 'no dmsetup wait left running');
  });
});
