import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ImageError, type ImageFailureCode } from '../../host-agent/src/errors.js';
import {
  checkSymlinkTarget,
  normaliseArchivePath,
  PathModel,
} from '../../host-agent/src/layer/path-policy.js';
import { printable, printableBytes } from '../../host-agent/src/layer/printable.js';

const limits = { maxPathLength: 4095, maxPathDepth: 256 };
const what = (): string => "member 'x'";

function normalise(raw: string, l = limits): string {
  return normaliseArchivePath(raw, l, what);
}

function rejects(fn: () => unknown, code: ImageFailureCode): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ImageError);
    assert.equal(err.code, code, err.message);
    assert.ok(err.message.startsWith("member 'x'"), err.message);
    return true;
  });
}

describe('normaliseArchivePath', () => {
  it('keeps plain relative paths as they are', () => {
    assert.equal(normalise('etc/passwd'), 'etc/passwd');
    assert.equal(normalise('usr/share/doc/ünïcödé ✓'), 'usr/share/doc/ünïcödé ✓');
    assert.equal(normalise('.hidden/..dots.../x.'), '.hidden/..dots.../x.');
    assert.equal(normalise('a\\b'), 'a\\b');
  });

  it('strips one leading "./", one trailing slash and "." components', () => {
    assert.equal(normalise('./etc/'), 'etc');
    assert.equal(normalise('./a/./b/.'), 'a/b');
    assert.equal(normalise('././a'), 'a');
  });

  it('maps the root entry to ""', () => {
    assert.equal(normalise('./'), '');
    assert.equal(normalise('.'), '');
    assert.equal(normalise('./.'), '');
  });

  it('refuses absolute paths and ".." anywhere', () => {
    rejects(() => normalise('/etc/passwd'), 'ARCHIVE_PATH_ESCAPE');
    rejects(() => normalise('//etc'), 'ARCHIVE_PATH_ESCAPE');
    rejects(() => normalise('..'), 'ARCHIVE_PATH_ESCAPE');
    rejects(() => normalise('../x'), 'ARCHIVE_PATH_ESCAPE');
    rejects(() => normalise('a/../b'), 'ARCHIVE_PATH_ESCAPE');
    rejects(() => normalise('a/..'), 'ARCHIVE_PATH_ESCAPE');
    rejects(() => normalise('./../x'), 'ARCHIVE_PATH_ESCAPE');
  });

  it('uses the code it is given for escapes (hard link targets)', () => {
    assert.throws(
      () => normaliseArchivePath('../x', limits, what, 'ARCHIVE_LINK_ESCAPE'),
      (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_LINK_ESCAPE',
    );
  });

  it('refuses empty names and components, NUL bytes and U+FFFD', () => {
    rejects(() => normalise(''), 'ARCHIVE_BAD_NAME');
    rejects(() => normalise('a//b'), 'ARCHIVE_BAD_NAME');
    rejects(() => normalise('a//'), 'ARCHIVE_BAD_NAME');
    rejects(() => normalise('a\0b'), 'ARCHIVE_BAD_NAME');
    rejects(() => normalise('bad\ufffdname'), 'ARCHIVE_BAD_NAME');
    rejects(() => normalise(`a/${'x'.repeat(256)}`), 'ARCHIVE_BAD_NAME');
  });

  it('accepts a 255-byte component, also made of multi-byte characters', () => {
    assert.equal(normalise('x'.repeat(255)), 'x'.repeat(255));
    assert.equal(normalise('é'.repeat(127)), 'é'.repeat(127));
    rejects(() => normalise('é'.repeat(128)), 'ARCHIVE_BAD_NAME');
  });

  it('enforces path length in bytes after normalisation, and depth in components', () => {
    const small = { maxPathLength: 10, maxPathDepth: 3 };
    assert.equal(normalise('./abcdefghij', small), 'abcdefghij');
    rejects(() => normalise('abcdefghijk', small), 'LIMIT_PATH_LENGTH');
    rejects(() => normalise('ééééé/é', small), 'LIMIT_PATH_LENGTH');
    assert.equal(normalise('a/b/c', small), 'a/b/c');
    assert.equal(normalise('a/./b/c/', small), 'a/b/c');
    rejects(() => normalise('a/b/c/d', small), 'LIMIT_PATH_DEPTH');
  });

  it('agrees between its fast and slow paths near the limits', () => {
    const l = { maxPathLength: 30, maxPathDepth: 4 };
    for (const raw of [
      'a/b/c/d',
      'a/b/c/d/e',
      'x'.repeat(30),
      'x'.repeat(31),
      'é'.repeat(15),
      'é'.repeat(16),
    ]) {
      let fast: string;
      try {
        fast = normalise(raw, l);
      } catch (err) {
        fast = (err as ImageError).code;
      }
      let slow: string;
      try {
        slow = normalise(`${raw}/.`, l);
      } catch (err) {
        slow = (err as ImageError).code;
      }
      assert.equal(fast, slow, raw);
    }
  });
});

describe('checkSymlinkTarget', () => {
  it('accepts absolute, relative and dangling targets verbatim', () => {
    checkSymlinkTarget('/etc/alternatives/editor', limits, what);
    checkSymlinkTarget('../../../../../etc/shadow', limits, what);
    checkSymlinkTarget('.', limits, what);
  });

  it('refuses empty, NUL-bearing and over-long targets', () => {
    rejects(() => checkSymlinkTarget('', limits, what), 'ARCHIVE_MALFORMED');
    rejects(() => checkSymlinkTarget('a\0b', limits, what), 'ARCHIVE_BAD_NAME');
    rejects(() => checkSymlinkTarget('x'.repeat(4096), limits, what), 'LIMIT_PATH_LENGTH');
  });
});

describe('PathModel', () => {
  it('knows the root and lists missing ancestors shallowest first', () => {
    const model = new PathModel();
    assert.equal(model.get(''), 'dir');
    assert.deepEqual(model.missingAncestors('a/b/c/file', what), ['a', 'a/b', 'a/b/c']);
    model.set('a', 'dir');
    assert.deepEqual(model.missingAncestors('a/b/c/file', what), ['a/b', 'a/b/c']);
    assert.deepEqual(model.missingAncestors('top', what), []);
  });

  it('refuses a parent that is a symlink, even deep in the path', () => {
    const model = new PathModel();
    model.set('a', 'dir');
    model.set('a/link', 'symlink');
    assert.throws(
      () => model.missingAncestors('a/link/b/c', what),
      (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_UNSAFE_LINK',
    );
  });

  it('refuses a parent that is a file or a device', () => {
    const model = new PathModel();
    model.set('f', 'file');
    model.set('dev', 'special');
    for (const path of ['f/x', 'dev/x/y']) {
      assert.throws(
        () => model.missingAncestors(path, what),
        (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_CONFLICT',
      );
    }
  });

  it('still checks deeper paths after a run of members in one directory', () => {
    const model = new PathModel();
    model.set('d', 'dir');
    assert.deepEqual(model.missingAncestors('d/a', what), []);
    model.set('d/a', 'file');
    model.set('d/s', 'symlink');
    assert.deepEqual(model.missingAncestors('d/b', what), []);
    assert.throws(
      () => model.missingAncestors('d/a/x', what),
      (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_CONFLICT',
    );
    assert.throws(
      () => model.missingAncestors('d/s/x', what),
      (err: unknown) => err instanceof ImageError && err.code === 'ARCHIVE_UNSAFE_LINK',
    );
    assert.deepEqual(model.missingAncestors('dd/x', what), ['dd']);
  });

  it('never forgets a directory', () => {
    const model = new PathModel();
    model.set('d', 'dir');
    assert.throws(() => model.remove('d'));
    model.set('f', 'file');
    model.remove('f');
    assert.equal(model.get('f'), undefined);
  });
});

describe('printable', () => {
  it('quotes and escapes control and bidi characters, and cuts long names', () => {
    assert.equal(printable("a'b"), "'a\\'b'");
    assert.equal(printable('a\nb\u202ec'), "'a\\u000ab\\u202ec'");
    assert.ok(printable('x'.repeat(1000)).length < 210);
    assert.equal(printableBytes(Buffer.from([0x66, 0xff, 0x0a])), "'f\\xff\\x0a'");
  });
});
