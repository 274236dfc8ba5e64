/**
 * The PAX fast paths (byte-level record lengths and times) must decide
 * exactly as the textual definitions they shortcut.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ImageError } from '../../host-agent/src/errors.js';
import { parsePaxRecords, parsePaxTime, paxTime } from '../../host-agent/src/layer/pax.js';

function timeOf(text: string): unknown {
  try {
    return paxTime(new Map([['mtime', Buffer.from(text, 'latin1')]]), 'mtime');
  } catch (err) {
    assert.ok(err instanceof ImageError);
    return 'malformed';
  }
}

describe('unpack PAX fast paths', () => {
  it('reads times from bytes as parsePaxTime reads them from text', () => {
    const samples = [
      '0',
      '1',
      '1700000000',
      '1795386642.198704251',
      '1795386642.198704251999',
      '1.',
      '1.5',
      '.5',
      '-1.25',
      '-3',
      '-',
      '',
      '1e9',
      '1.2.3',
      '1 ',
      ' 1',
      '123456789012345',
      '1234567890123456',
      '123456789012345.000000001',
      '00012.000100',
      '1.x',
    ];
    for (const text of samples) {
      const slow = parsePaxTime(text) ?? 'malformed';
      assert.deepEqual(timeOf(text), slow, text);
    }
  });

  it('accepts and refuses record lengths as /^[1-9][0-9]{0,8}$/ did', () => {
    const good = '12 path=abc\n';
    assert.equal(parsePaxRecords(Buffer.from(good)).get('path')?.toString(), 'abc');
    for (const bad of [
      '012 path=abc\n',
      ' 12 path=abc\n',
      '12path=abc\n',
      '1234567890 a=b\n',
      '12',
      '1x path=abc\n',
    ]) {
      assert.throws(
        () => parsePaxRecords(Buffer.from(bad)),
        (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_MALFORMED',
        JSON.stringify(bad),
      );
    }
    // NUL padding after the last record is accepted, anything else is not.
    const padded = Buffer.concat([Buffer.from(good), Buffer.alloc(20)]);
    assert.equal(parsePaxRecords(padded).size, 1);
  });
});

describe('unpack PAX unused times', () => {
  it('leaves out atime and ctime only when asked, and still checks their form', () => {
    const text =
      '30 atime=1795386594.722704251\n30 ctime=1795386642.198704251\n12 atimex=1\n11 mtime=5\n';
    const data = Buffer.from(text);
    assert.deepEqual([...parsePaxRecords(data).keys()], ['atime', 'ctime', 'atimex', 'mtime']);
    assert.deepEqual([...parsePaxRecords(data, true).keys()], ['atimex', 'mtime']);
    assert.throws(
      () => parsePaxRecords(Buffer.from('99 atime=1\n'), true),
      (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_MALFORMED',
    );
  });
});
