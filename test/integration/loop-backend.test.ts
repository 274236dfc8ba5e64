import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';
import type { ObjectSpec, SnapshotSpec } from '../../host-agent/src/storage/backend.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';

/** A loop backend on a temp state dir, released (mounts, loops, files) after the test. */
function tempBackend(t: { after(fn: () => void): void }): {
  stateDir: string;
  backend: LoopBackend;
} {
  const stateDir = mkdtempSync(join(tmpdir(), 'thinrelay-loop-'));
  t.after(() => releaseStateDir(stateDir));
  return { stateDir, backend: new LoopBackend({ stateDir, reserveBytes: 0 }) };
}

test(
  'loop backend: volume → unpack mount → seal → snapshot → activate → remove, nothing left',
  { skip: needsRoot },
  async (t) => {
    const { stateDir, backend } = tempBackend(t);
    const volume: ObjectSpec = {
      kind: 'volume',
      name: 'vol-00000001',
      sizeBytes: 256 * 1024 ** 2,
      thinId: null,
    };
    const snap: SnapshotSpec = {
      kind: 'snapshot',
      name: 'snap-00000002',
      sizeBytes: volume.sizeBytes,
      thinId: null,
      origin: volume,
    };

    await backend.createVolume(volume);
    await assert.rejects(backend.createVolume(volume), /EEXIST/);
    const { mountpoint } = await backend.mountForUnpack(volume);
    const opts =
      readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .find((l) => l.split(' ')[4] === mountpoint) ?? '';
    assert.match(opts, /nosuid/);
    assert.match(opts, /nodev/);
    writeFileSync(join(mountpoint, 'hello'), 'world');
    await backend.flush(volume);
    let inv = await backend.inventory();
    assert.deepEqual(
      inv.mounted.map((m) => m.name),
      ['vol-00000001'],
    );
    await backend.seal(volume);
    await backend.seal(volume); // idempotent
    assert.deepEqual(hostInventory(stateDir).loops, []);
    assert.deepEqual(hostInventory(stateDir).mounts, []);

    await backend.createSnapshot(snap);
    const device = await backend.activate(snap);
    assert.equal(await backend.activate(snap), device, 'activate is idempotent');
    assert.match(device, /^\/dev\/loop\d+$/);
    const probe = join(stateDir, 'probe');
    mkdirSync(probe);
    execFileSync('mount', ['-o', 'ro', device, probe]);
    try {
      assert.equal(readFileSync(join(probe, 'hello'), 'utf8'), 'world');
    } finally {
      execFileSync('umount', [probe]);
    }
    inv = await backend.inventory();
    assert.deepEqual(inv.objects.map((o) => o.name).sort(), ['snap-00000002', 'vol-00000001']);
    assert.deepEqual(inv.attached, [{ name: 'snap-00000002', devicePath: device }]);

    await backend.deactivate(snap);
    await backend.remove(snap);
    await backend.remove(volume);
    await backend.remove(volume); // idempotent
    assert.deepEqual(hostInventory(stateDir), { loops: [], mounts: [], poolFiles: [] });
  },
);

test(
  'loop backend: a partial snapshot copy shows up as a stray',
  { skip: needsRoot },
  async (t) => {
    const { backend } = tempBackend(t);
    await backend.createPool();
    writeFileSync(join(backend.poolDir, 'snap-00000009.img.partial'), 'x');
    const inv = await backend.inventory();
    assert.equal(inv.strays.length, 1);
    assert.equal(inv.strays[0]?.description, 'partial snapshot copy');
    await backend.removeStray(inv.strays[0].path);
    assert.deepEqual((await backend.inventory()).strays, []);
  },
);

test(
  'loop backend: ensureSpace refuses when the reserve would be eaten',
  { skip: needsRoot },
  async (t) => {
    const { backend } = tempBackend(t);
    await backend.createPool();
    const { freeBytes } = await backend.poolStatus();
    await backend.ensureSpace(1024);
    await assert.rejects(backend.ensureSpace(freeBytes * 2), { code: 'LOW_SPACE' });
  },
);
