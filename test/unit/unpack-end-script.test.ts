/**
 * The end-of-unpack helper: device numbers, owner, mode and nanosecond
 * times as the kernel records them. Needs root (mknod, chown).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { EndScript } from '../../host-agent/src/layer/end-script.js';

const isRoot = process.geteuid?.() === 0;
const hasPerl = spawnSync('perl', ['-e', '1']).status === 0;

describe('unpack end script', () => {
  it(
    'makes device nodes and fifos with their numbers, owner, mode and exact time',
    { skip: !isRoot || !hasPerl },
    async (t) => {
      const script = EndScript.create();
      if (script === undefined) return t.skip('no system call numbers for this architecture');
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinrelay-end-'));
      t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
      const chr = path.join(dir, 'c\nweird name');
      const blk = path.join(dir, 'b');
      const fifo = path.join(dir, 'p');
      assert.equal(script.mknod(chr, 'char-device', 300, 70000), true);
      assert.equal(script.mknod(blk, 'block-device', 8, 1), true);
      assert.equal(script.mknod(fifo, 'fifo', 0, 0), true);
      assert.equal(script.mknod(blk, 'block-device', 2 ** 32, 1), false);
      assert.equal(script.owner(chr, 2 ** 32, 0, 0o600), false);
      assert.equal(script.owner(chr, 1234, 5678, 0o4640), true);
      assert.equal(script.owner(blk, 0, 6, 0o660), true);
      assert.equal(script.owner(fifo, 1, 1, 0o1644), true);
      script.time(chr, { sec: 1700000000, nsec: 123456789 });
      script.time(blk, { sec: -2, nsec: 750000000 });
      script.time(fifo, { sec: 5, nsec: 0 });
      await script.run();

      const c = fs.lstatSync(chr, { bigint: true });
      assert.ok(c.isCharacterDevice());
      // glibc's makedev: major 300 = 0x12c, minor 70000 = 0x11170.
      const major = 300n;
      const minor = 70000n;
      const rdev =
        ((major & 0xfffff000n) << 32n) |
        ((major & 0xfffn) << 8n) |
        ((minor & 0xffffff00n) << 12n) |
        (minor & 0xffn);
      assert.equal(c.rdev, rdev);
      assert.deepEqual([c.uid, c.gid, c.mode & 0o7777n], [1234n, 5678n, 0o4640n]);
      assert.equal(c.mtimeNs, 1700000000123456789n);

      const b = fs.lstatSync(blk, { bigint: true });
      assert.ok(b.isBlockDevice());
      assert.equal(b.rdev, (8n << 8n) | 1n);
      assert.deepEqual([b.uid, b.gid, b.mode & 0o7777n], [0n, 6n, 0o660n]);
      assert.equal(b.mtimeNs, -1250000000n);

      const p = fs.lstatSync(fifo, { bigint: true });
      assert.ok(p.isFIFO());
      assert.deepEqual([p.uid, p.gid, p.mode & 0o7777n], [1n, 1n, 0o1644n]);
      assert.equal(p.mtimeNs, 5000000000n);
    },
  );
});
