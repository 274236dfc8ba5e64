/**
 * writeFileDurably (the group policies, the fleet registration record): the
 * file is replaced whole with its mode and no temporary is left. The fsyncs of
 * the file and its directory cannot be observed without a power cut; this
 * shows the write path itself works.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeFileDurably } from '../../host-agent/src/sys/durable-write.js';

test('writeFileDurably replaces a file whole, with its mode, and leaves no temporary', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-durable-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'record.json');
  await writeFileDurably(path, 'first, and longer\n', { mode: 0o600 });
  await writeFileDurably(path, 'second\n', { mode: 0o600 });
  assert.equal(readFileSync(path, 'utf8'), 'second\n');
  assert.equal(statSync(path).mode & 0o777, 0o600);
  assert.deepEqual(readdirSync(dir), ['record.json']);
});

test('writeFileDurably into a missing directory fails and creates nothing', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'thinrelay-durable-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await assert.rejects(writeFileDurably(join(dir, 'missing', 'x.json'), '{}\n', { mode: 0o644 }), {
    code: 'ENOENT',
  });
  assert.equal(existsSync(join(dir, 'missing')), false);
});
