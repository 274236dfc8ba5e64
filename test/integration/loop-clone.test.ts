/**
 * The loop backend's clone on a reflink filesystem (xfs) is a FICLONE made
 * in process: no `cp` runs (a `cp` on PATH that fails proves it), the clone
 * shares its origin's extents (the xfs's used space does not grow by the
 * origin's size) and reads back the same bytes. On ext4 (no reflinks) the
 * backend still copies with cp, sparse. Everything is released in t.after.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statfsSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { LoopBackend } from '../../host-agent/src/storage/loop/loop-backend.js';
import { needsRootAndTools } from '../helpers/root.js';
import { smallFilesystem } from '../helpers/small-fs.js';

const skip = needsRootAndTools(['mkfs.xfs', 'mkfs.ext4']);
const MiB = 1024 ** 2;

const used = (dir: string): number => {
  const fs = statfsSync(dir);
  return (fs.blocks - fs.bfree) * fs.bsize;
};

test('a clone on xfs is an in-process reflink; on ext4 a sparse cp', { skip }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'thinrelay-loopclone-'));
  const path = process.env.PATH;
  t.after(() => {
    process.env.PATH = path;
    rmSync(work, { recursive: true, force: true });
  });
  // A cp that fails: any clone that spawns one fails with it.
  const shims = join(work, 'bin');
  mkdirSync(shims);
  writeFileSync(join(shims, 'cp'), '#!/bin/sh\necho "cp must not run" >&2\nexit 97\n');
  chmodSync(join(shims, 'cp'), 0o755);

  for (const type of ['xfs', 'ext4'] as const) {
    const fs = smallFilesystem(1024, type);
    t.after(() => fs.release());
    const { mnt, stateDir } = fs;
    const backend = new LoopBackend({ stateDir, reserveBytes: 0 });
    const origin = {
      kind: 'volume' as const,
      name: 'vol-00000001',
      sizeBytes: 64 * MiB,
      thinId: null,
    };
    await backend.createVolume(origin);
    const content = randomBytes(32 * MiB);
    const fd = openSync(backend.fileOf(origin), 'r+');
    writeSync(fd, content, 0, content.length, 0);
    closeSync(fd);
    execFileSync('sync', ['-f', mnt]);
    const before = used(mnt);
    const clone = { ...origin, name: 'vol-00000002', origin };
    process.env.PATH = `${shims}:${path}`;
    const made = backend.createVolumeFrom(clone);
    if (type === 'xfs') await made;
    else {
      // No reflinks on ext4: the backend copies with cp (here the failing one).
      await assert.rejects(made, /exit|97|cp must not run/);
      process.env.PATH = path;
      await backend.createVolumeFrom(clone);
    }
    process.env.PATH = path;
    execFileSync('sync', ['-f', mnt]);
    const grew = used(mnt) - before;
    const copy = readFileSync(backend.fileOf(clone));
    assert.equal(copy.length, 64 * MiB);
    assert.ok(
      copy.subarray(0, 32 * MiB).equals(content),
      `${type}: the clone has the origin's bytes`,
    );
    if (type === 'xfs')
      assert.ok(grew < 4 * MiB, `xfs: the clone shares its extents (grew ${grew} bytes)`);
    else assert.ok(grew >= 32 * MiB && grew < 48 * MiB, `ext4: a sparse copy (grew ${grew} bytes)`);
  }
});
