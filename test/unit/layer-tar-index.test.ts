/**
 * The tar index and the streaming reader read headers one way
 * (layer/tar-extended.ts): for the same bytes the index names the members
 * the reader meets — PAX paths and sizes, global PAX records, GNU long names
 * — and refuses what the reader refuses, with the same reason code.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ImageError } from '../../host-agent/src/errors.js';
import { indexTar } from '../../host-agent/src/layer/tar-index.js';
import { TarReader } from '../../host-agent/src/layer/tar-reader.js';
import { gnuLongName, paxHeader, rawMember, rawTar } from '../helpers/tar-fixtures.js';

const dir = fs.mkdtempSync(join(os.tmpdir(), 'thinrelay-tar-index-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;

function indexed(tar: Buffer): string[] {
  const file = join(dir, `t${n++}.tar`);
  fs.writeFileSync(file, tar);
  const fd = fs.openSync(file, 'r');
  try {
    return indexTar({ fd, offset: 0, length: tar.length }, 'layer 1', 1000, 'LAYER_NOT_TAR').map(
      (m) => `${m.type}:${m.name}:${m.linkname}:${m.size}`,
    );
  } finally {
    fs.closeSync(fd);
  }
}

function streamed(tar: Buffer): string[] {
  const seen: string[] = [];
  const reader = new TarReader(
    {
      member: (m) => seen.push(`${m.type}:${m.name}:${m.linkname}:${m.size}`),
      data: () => undefined,
      memberEnd: () => undefined,
    },
    { maxContentBytes: 1 << 30, maxEntries: 1000 },
  );
  reader.push(tar);
  reader.finish();
  return seen;
}

function refusedBoth(tar: Buffer, code: string): void {
  for (const read of [indexed, streamed])
    assert.throws(
      () => read(tar),
      (err: unknown) => err instanceof ImageError && err.code === code,
      read.name,
    );
}

describe('tar index and reader', () => {
  it('name the same members: PAX path, linkpath and size, global records, GNU long names', () => {
    const long = `${'d'.repeat(120)}/file`;
    const tar = rawTar(
      paxHeader({ path: 'pax/name', size: '3' }),
      rawMember({ name: 'short', size: 3 }, 'abc'),
      paxHeader({ linkpath: 'pax/name' }),
      rawMember({ name: 'hard', type: '1' }),
      gnuLongName(long),
      rawMember({ name: 'trunc' }, 'xy'),
      // A global record names every member after it.
      paxHeader({ path: 'from-global' }, true),
      rawMember({ name: 'renamed' }, 'a'),
    );
    const expected = [
      'file:pax/name::3',
      'hardlink:hard:pax/name:0',
      `file:${long}::2`,
      'file:from-global::1',
    ];
    assert.deepEqual(streamed(tar), expected);
    assert.deepEqual(indexed(tar), expected);
  });

  it('refuse the same names and members', () => {
    refusedBoth(
      rawTar(rawMember({ name: Buffer.from([0x61, 0xff, 0x62]) }, 'x')),
      'ARCHIVE_BAD_NAME',
    );
    refusedBoth(
      rawTar(gnuLongName(Buffer.from('a\0b')), rawMember({ name: 'x' }, 'x')),
      'ARCHIVE_BAD_NAME',
    );
    refusedBoth(
      rawTar(paxHeader({ 'GNU.sparse.map': '0,1' }), rawMember({ name: 's' }, 'x')),
      'ARCHIVE_UNSUPPORTED_ENTRY',
    );
    refusedBoth(
      rawTar(paxHeader({ size: 'lots' }), rawMember({ name: 'z' }, 'x')),
      'ARCHIVE_MALFORMED',
    );
  });
});
