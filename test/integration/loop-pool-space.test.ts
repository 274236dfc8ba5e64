/**
 * The loop pool's used bytes with reflinked volumes: real loop-mounted xfs
 * and ext4 filesystems as the state dir's home, volumes cloned by the
 * backend's own cp --reflink. Shared extents count once (and the figure
 * follows what the filesystem really took); on ext4 nothing changes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  statfsSync,
  statSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { CloneSpec, ObjectSpec, PoolStatus } from '../../host-agent/src/storage/backend.js';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';
import { runCli } from '../helpers/cli.js';
import { hostInventory, releaseStateDir } from '../helpers/host-leaks.js';
import { needsRootAndTools } from '../helpers/root.js';

const MiB = 1024 ** 2;
/** Room for per-file extent-map blocks and the filesystem's own bookkeeping. */
const slack = 2 * MiB;

const volume = (n: number): ObjectSpec => ({
  kind: 'volume',
  name: `vol-${String(n).padStart(8, '0')}`,
  sizeBytes: 64 * MiB,
  thinId: null,
});
const cloneOf = (n: number, origin: ObjectSpec): CloneSpec => ({
  ...volume(n),
  kind: 'volume',
  origin,
});

/** Overwrites `mib` MiB of `file` from `offsetMiB` with fresh random data, flushed. */
function overwrite(file: string, offsetMiB: number, mib: number): void {
  const fd = openSync(file, 'r+');
  try {
    for (let i = 0; i < mib; i++) writeSync(fd, randomBytes(MiB), 0, MiB, (offsetMiB + i) * MiB);
  } finally {
    closeSync(fd);
  }
  execFileSync('sync', [file]);
}

function assertNear(actual: number, expected: number, what: string): void {
  assert.ok(
    Math.abs(actual - expected) <= slack,
    `${what}: ${(actual / MiB).toFixed(2)} MiB, expected about ${(expected / MiB).toFixed(2)} MiB`,
  );
}

/** A filesystem of `type` on a loop-mounted image file, holding a loop backend's state dir. */
function poolOn(type: 'xfs' | 'ext4'): {
  backend: LoopBackend;
  stateDir: string;
  fsUsed: () => number;
  release: () => void;
} {
  const work = mkdtempSync(join(tmpdir(), `thinrelay-poolspace-${type}-`));
  const mnt = join(work, 'mnt');
  const img = join(work, 'fs.img');
  mkdirSync(mnt);
  execFileSync('truncate', ['-s', '1G', img]);
  if (type === 'xfs') execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
  else execFileSync('mkfs.ext4', ['-q', '-F', img]);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  const stateDir = join(mnt, 'state');
  return {
    backend: new LoopBackend({ stateDir, reserveBytes: 0 }),
    stateDir,
    fsUsed: () => {
      execFileSync('sync', ['-f', mnt]);
      const s = statfsSync(mnt);
      return (s.blocks - s.bfree) * s.bsize;
    },
    release: () => {
      releaseStateDir(stateDir);
      // mount -o loop attached with autoclear: unmounting detaches it.
      execFileSync('umount', [mnt]);
      execFileSync('rm', ['-rf', work]);
    },
  };
}

const needs = needsRootAndTools(['mkfs.xfs', 'mkfs.ext4', 'filefrag']);

describe('loop pool status counts reflink-shared extents once', { skip: needs }, () => {
  let xfs: ReturnType<typeof poolOn>;
  before(() => {
    xfs = poolOn('xfs');
  });
  after(() => xfs.release());

  test('two reflinked copies of 64 MiB use about 64 MiB; modifying one adds what changed; removing the origin unshares', async () => {
    const { backend } = xfs;
    const origin = volume(1);
    await backend.createVolume(origin);
    overwrite(backend.fileOf(origin), 0, 64);
    const one = await backend.poolStatus();
    assertNear(one.dataUsedBytes, 64 * MiB, 'one volume');
    assert.equal(one.dataSharedBytes, 0);
    assert.equal(one.dataReferencedBytes, one.dataUsedBytes);
    assert.match(one.detail, /shared between reflinked volumes counted once/);

    const fsBefore = xfs.fsUsed();
    const copy = cloneOf(2, origin);
    await backend.createVolumeFrom(copy);
    const two = await backend.poolStatus();
    assertNear(two.dataUsedBytes, 64 * MiB, 'two reflinked copies');
    assertNear(two.dataReferencedBytes!, 128 * MiB, 'per-file sum');
    assertNear(two.dataSharedBytes!, 64 * MiB, 'shared');
    // The figure follows what the filesystem really took for the copy.
    assertNear(two.dataUsedBytes - one.dataUsedBytes, xfs.fsUsed() - fsBefore, 'growth');

    overwrite(backend.fileOf(copy), 8, 8);
    const modified = await backend.poolStatus();
    assertNear(modified.dataUsedBytes, 72 * MiB, 'copy modified by 8 MiB');
    assertNear(modified.dataSharedBytes!, 56 * MiB, 'still shared');

    // A third copy of the modified one shares everything again.
    await backend.createVolumeFrom(cloneOf(3, copy));
    assertNear((await backend.poolStatus()).dataUsedBytes, 72 * MiB, 'third copy');

    await backend.remove(origin);
    const left = await backend.poolStatus();
    assertNear(left.dataUsedBytes, 64 * MiB, 'after the origin is removed');
    assertNear(left.dataReferencedBytes!, 128 * MiB, 'two copies left');

    // The CLI shows both figures, as JSON and as text.
    const env = { THINRELAY_STATE_DIR: xfs.stateDir, THINRELAY_RESERVE_BYTES: '0' };
    const r = await runCli(['pool', 'status', '--json'], env);
    assert.equal(r.code, 0, r.stderr);
    const status = JSON.parse(r.stdout) as PoolStatus;
    assert.equal(status.dataUsedBytes, left.dataUsedBytes);
    assert.equal(status.dataSharedBytes, left.dataSharedBytes);
    const text = await runCli(['pool', 'status'], env);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^shared +\d+(\.\d+)? MiB shared between volumes, counted once/m);
  });

  test('without filefrag, status still answers: the per-file sum, and why', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    let s: PoolStatus;
    try {
      s = await xfs.backend.poolStatus();
    } finally {
      process.env.PATH = path;
    }
    assert.ok(s.dataReferencedBytes! > 0);
    assert.equal(s.dataUsedBytes, s.dataReferencedBytes);
    assert.equal(s.dataSharedBytes, 0);
    assert.match(s.detail, /FIEMAP unreadable: filefrag is not installed/);
  });

  test('on ext4 (no reflinks) the figures are the files’ own blocks, as before', async (t) => {
    const ext4 = poolOn('ext4');
    t.after(() => ext4.release());
    const { backend } = ext4;
    const origin = volume(1);
    await backend.createVolume(origin);
    overwrite(backend.fileOf(origin), 0, 64);
    await backend.createVolumeFrom(cloneOf(2, origin));
    const s = await backend.poolStatus();
    const blocks = [1, 2].reduce(
      (sum, n) => sum + statSync(backend.fileOf(volume(n))).blocks * 512,
      0,
    );
    assert.equal(s.dataUsedBytes, blocks);
    assertNear(s.dataUsedBytes, 128 * MiB, 'two full copies');
    assert.equal(s.dataSharedBytes, 0);
    assert.match(s.detail, /no reflinks/);
    assert.deepEqual(hostInventory(ext4.stateDir).loops, []);
  });
});
