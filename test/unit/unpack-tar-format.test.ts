import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ImageError } from '../../host-agent/src/errors.js';
import { restorableXattrs, XattrPlan } from '../../host-agent/src/layer/metadata.js';
import {
  mergePaxRecords,
  parsePaxRecords,
  parsePaxTime,
  paxXattrs,
} from '../../host-agent/src/layer/pax.js';
import {
  checksumMatches,
  decodeHeader,
  memberType,
} from '../../host-agent/src/layer/tar-header.js';
import { TarReader, type TarMember } from '../../host-agent/src/layer/tar-reader.js';
import { epochText, nodeSeconds } from '../../host-agent/src/layer/times.js';
import {
  packTar,
  paxData,
  rawHeader,
  rawMember,
  rawTar,
  sealHeader,
} from '../helpers/tar-fixtures.js';

describe('tar header decoding', () => {
  it('reads GNU base-256 numbers, positive and negative', () => {
    const block = rawHeader({ name: 'x' });
    block.fill(0, 108, 116);
    block[108] = 0x80;
    block.writeUIntBE(5_000_000_000, 110, 6);
    block.fill(0xff, 136, 148);
    block.writeIntBE(-86400, 142, 6);
    const header = decodeHeader(sealHeader(block));
    assert.ok(header !== 'bad-name');
    assert.equal(header.uid, 5_000_000_000);
    assert.equal(header.mtime, -86400);
  });

  it('accepts signed-sum checksums and refuses wrong ones', () => {
    const block = rawHeader({ name: 'é' });
    assert.ok(checksumMatches(block));
    let signed = 0;
    for (let i = 0; i < 512; i++) {
      const v = i >= 148 && i < 156 ? 0x20 : block[i]!;
      signed += v >= 0x80 ? v - 0x100 : v;
    }
    block.write(signed.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    assert.ok(checksumMatches(block));
    block[0] = 0x79;
    assert.ok(!checksumMatches(block));
  });

  it('joins the POSIX ustar prefix, but not the GNU header fields in the same place', () => {
    const posix = decodeHeader(rawHeader({ name: 'name', prefix: 'some/prefix' }));
    assert.ok(posix !== 'bad-name');
    assert.equal(Buffer.from(posix.name).toString(), 'some/prefix/name');
    const gnu = decodeHeader(rawHeader({ name: 'name', prefix: 'xx', format: 'gnu' }));
    assert.ok(gnu !== 'bad-name');
    assert.equal(Buffer.from(gnu.name).toString(), 'name');
  });

  it('flags text hidden after the NUL that ends a name', () => {
    const block = rawHeader({ name: Buffer.from('ok\0../../x') });
    assert.equal(decodeHeader(block), 'bad-name');
  });

  it('maps typeflags like GNU tar, trailing-slash files included', () => {
    assert.equal(memberType(0x30, 'f'), 'file');
    assert.equal(memberType(0, 'd/'), 'directory');
    assert.equal(memberType(0x37, 'contiguous'), 'file');
    assert.equal(memberType(0x31, 'h'), 'hardlink');
    assert.deepEqual(memberType(0x53, 's'), { unsupported: 'a GNU sparse file' });
    assert.ok(typeof memberType(0x5a, 'z') === 'object');
  });
});

describe('PAX records', () => {
  it('parses records with raw binary values and multi-digit lengths', () => {
    const data = paxData({
      path: 'a'.repeat(200),
      'SCHILY.xattr.user.bin': Buffer.from([0, 10, 255]),
    });
    const records = parsePaxRecords(data);
    assert.equal(records.get('path')?.toString(), 'a'.repeat(200));
    assert.deepEqual([...records.get('SCHILY.xattr.user.bin')!], [0, 10, 255]);
  });

  it('refuses malformed records', () => {
    for (const bad of ['5 a=b\n', '6 ab\n', 'x path=a\n', '11 path=ab', '7 =abc\n']) {
      assert.throws(
        () => parsePaxRecords(Buffer.from(bad)),
        (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_MALFORMED',
        bad,
      );
    }
  });

  it('lets an empty value delete a keyword, but keeps empty xattrs', () => {
    const global = parsePaxRecords(paxData({ uid: '5', path: 'g' }));
    const local = parsePaxRecords(paxData({ uid: '', 'SCHILY.xattr.user.e': '' }));
    const merged = mergePaxRecords(global, local);
    assert.equal(merged.has('uid'), false);
    assert.equal(merged.get('path')?.toString(), 'g');
    assert.equal(merged.get('SCHILY.xattr.user.e')?.length, 0);
  });

  it('decodes xattr names as GNU tar encodes them (%3D and %25 only)', () => {
    const records = parsePaxRecords(
      paxData({ 'SCHILY.xattr.user.a%3Db%25c%41': 'v', 'SCHILY.xattr.security.capability': 'c' }),
    );
    const xattrs = paxXattrs(records);
    assert.deepEqual([...xattrs.keys()], ['user.a=b%c%41', 'security.capability']);
    assert.deepEqual(
      [...(restorableXattrs(xattrs, 'f')?.keys() ?? [])],
      ['user.a=b%c%41', 'security.capability'],
    );
  });

  it('parses times with fractions and signs', () => {
    assert.deepEqual(parsePaxTime('1700000000'), { sec: 1700000000, nsec: 0 });
    assert.deepEqual(parsePaxTime('1700000000.123456789123'), { sec: 1700000000, nsec: 123456789 });
    assert.deepEqual(parsePaxTime('1.5'), { sec: 1, nsec: 500000000 });
    assert.deepEqual(parsePaxTime('-1.25'), { sec: -2, nsec: 750000000 });
    assert.deepEqual(parsePaxTime('-3'), { sec: -3, nsec: 0 });
    assert.equal(parsePaxTime('1e9'), undefined);
    assert.equal(parsePaxTime(''), undefined);
  });
});

describe('times', () => {
  it('lets Node set whole seconds only: no fraction, nothing negative', () => {
    assert.equal(nodeSeconds({ sec: 5, nsec: 0 }), 5);
    assert.equal(nodeSeconds({ sec: 1700000000, nsec: 123456000 }), undefined);
    assert.equal(nodeSeconds({ sec: 1700000000, nsec: 123456789 }), undefined);
    assert.equal(nodeSeconds({ sec: -1, nsec: 0 }), undefined);
  });

  it('sets whole-second times exactly through fs.utimes, and leaves fractions to the exact path', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinrelay-times-'));
    try {
      const file = path.join(dir, 'f');
      fs.writeFileSync(file, '');
      let seed = 12345;
      for (let i = 0; i < 500; i++) {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        const sec = 1_000_000_000 + (seed % 2_000_000_000);
        fs.utimesSync(file, 0, nodeSeconds({ sec, nsec: 0 })!);
        const got = fs.statSync(file, { bigint: true }).mtimeNs;
        assert.equal(got, BigInt(sec) * 1_000_000_000n, String(sec));
        // A double cannot carry these to the nanosecond (Node 26 keeps the rounding error).
        assert.equal(nodeSeconds({ sec, nsec: (seed % 1_000_000) * 1000 + 1000 }), undefined);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('writes times for touch -d', () => {
    assert.equal(epochText({ sec: 1700000000, nsec: 5 }), '@1700000000.000000005');
    assert.equal(epochText({ sec: -2, nsec: 750000000 }), '@-1.250000000');
  });
});

describe('xattr restore dump', () => {
  it('quotes paths and names the way setfattr --restore unquotes them, values in hex', () => {
    const plan = new XattrPlan();
    plan.set(
      'dir/we ird=\\',
      new Map([
        ['user.a=b', Buffer.from([0, 0xff])],
        ['user.empty', Buffer.alloc(0)],
      ]),
    );
    assert.equal(
      plan.dump('/root'),
      '# file: /root/dir/we\\040ird\\075\\134\nuser.a\\075b=0x00ff\nuser.empty=0x\n\n',
    );
  });
});

describe('TarReader', () => {
  function readAll(archive: Buffer, chunkSize: number): Array<[TarMember, string]> {
    const members: Array<[TarMember, string]> = [];
    let content: Buffer[] = [];
    const reader = new TarReader(
      {
        member: (m) => {
          content = [];
          members.push([m, '']);
        },
        data: (chunk) => content.push(Buffer.from(chunk)),
        memberEnd: () => {
          members[members.length - 1]![1] = Buffer.concat(content).toString();
        },
      },
      { maxContentBytes: 1 << 30, maxEntries: 1000 },
    );
    for (let i = 0; i < archive.length && !reader.ended; i += chunkSize) {
      reader.push(archive.subarray(i, i + chunkSize));
    }
    reader.finish();
    return members;
  }

  it('yields the same members whatever the chunk size', async () => {
    const archive = await packTar([
      { name: 'a', content: 'alpha' },
      { name: `long/${'x'.repeat(150)}`, content: 'beta'.repeat(300) },
      { name: 'l', type: 'symlink', linkname: '/abs' },
    ]);
    const whole = readAll(archive, archive.length);
    assert.deepEqual(
      whole.map(([m, c]) => [m.name, m.type, m.linkname, c.length]),
      [
        ['a', 'file', '', 5],
        [`long/${'x'.repeat(150)}`, 'file', '', 1200],
        ['l', 'symlink', '/abs', 0],
      ],
    );
    for (const size of [1, 7, 511, 512, 513, 4096]) {
      assert.deepEqual(readAll(archive, size), whole, `chunk size ${size}`);
    }
  });

  it('applies global PAX records to every later member, local ones to the next only', () => {
    const archive = rawTar(
      rawMember({ name: 'g', type: 'g' }, paxData({ uid: '4242', mtime: '10.5' })),
      rawMember({ name: 'x', type: 'x' }, paxData({ uid: '7' })),
      rawMember({ name: 'first' }),
      rawMember({ name: 'second' }),
    );
    const members = readAll(archive, 100).map(([m]) => [m.name, m.uid, m.mtime.sec, m.mtime.nsec]);
    assert.deepEqual(members, [
      ['first', 7, 10, 500000000],
      ['second', 4242, 10, 500000000],
    ]);
  });

  it('stops at the end-of-archive marker and ignores what follows', () => {
    const archive = Buffer.concat([
      rawTar(rawMember({ name: 'only' }, 'x')),
      Buffer.from('garbage'),
    ]);
    assert.deepEqual(
      readAll(archive, 64).map(([m]) => m.name),
      ['only'],
    );
  });
});
