/**
 * Hostile and broken archives: each must be refused with the right reason
 * code, and nothing outside the unpack root may change. The root is a
 * subdirectory of a sandbox whose other contents (a sentinel file among
 * them) are snapshotted before and compared after.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { ImageError, type ImageFailureCode } from '../../host-agent/src/errors.js';
import { unpackArchive, type UnpackOptions } from '../../host-agent/src/layer/index.js';
import {
  chunked,
  corruptChecksum,
  endOfArchive,
  gnuLongName,
  gzip,
  packTar,
  paxHeader,
  rawHeader,
  rawMember,
  rawTar,
  sealHeader,
  type RawHeaderFields,
} from '../helpers/tar-fixtures.js';

const own = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };

const defaultLimits: UnpackOptions['limits'] = {
  maxUnpackedBytes: 64 * 1024 * 1024,
  maxEntries: 10_000,
  maxPathLength: 4095,
  maxPathDepth: 256,
};

interface Sandbox {
  root: string;
  outside: string;
  sentinel: string;
  /** Everything under the sandbox except root, as it was before the unpack. */
  before: string;
}

function listOutside(base: string, root: string): string {
  const lines: string[] = [];
  const walk = (dir: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const abs = path.join(dir, name);
      if (abs === root) continue;
      const st = fs.lstatSync(abs);
      const content = st.isFile() ? fs.readFileSync(abs, 'utf8') : '';
      lines.push(`${abs} ${st.mode} ${st.nlink} ${st.size} ${st.mtimeMs} ${content}`);
      if (st.isDirectory()) walk(abs);
    }
  };
  walk(base);
  const parent = fs.lstatSync(base);
  lines.push(`${base} ${parent.mode} ${parent.nlink} ${parent.mtimeMs}`);
  return lines.join('\n');
}

function sandbox(t: TestContext): Sandbox {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'thinrelay-hostile-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const root = path.join(base, 'root');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(root);
  fs.mkdirSync(outside);
  const sentinel = path.join(outside, 'sentinel');
  fs.writeFileSync(sentinel, 'untouched');
  fs.writeFileSync(path.join(base, 'sibling'), 'also untouched');
  return { root, outside, sentinel, before: listOutside(base, root) };
}

function assertOutsideUntouched(sb: Sandbox): void {
  const base = path.dirname(sb.root);
  assert.equal(listOutside(base, sb.root), sb.before, 'something outside the root changed');
  assert.equal(fs.readFileSync(sb.sentinel, 'utf8'), 'untouched');
  assert.equal(fs.statSync(sb.sentinel).nlink, 1);
}

function unpack(
  sb: Sandbox,
  archive: Buffer,
  limits: Partial<UnpackOptions['limits']> = {},
): Promise<unknown> {
  return unpackArchive(chunked(archive, 1000), {
    root: sb.root,
    limits: { ...defaultLimits, ...limits },
  });
}

/** Rejects with an ImageError of `code` whose message names `mentions`, and nothing escaped. */
async function refused(
  t: TestContext,
  archive: Buffer | ((sb: Sandbox) => Buffer),
  code: ImageFailureCode,
  mentions?: string,
  limits?: Partial<UnpackOptions['limits']>,
): Promise<Sandbox> {
  const sb = sandbox(t);
  const bytes = typeof archive === 'function' ? archive(sb) : archive;
  await assert.rejects(unpack(sb, bytes, limits), (err: unknown) => {
    assert.ok(err instanceof ImageError, `expected an ImageError, got ${String(err)}`);
    assert.equal(err.code, code, `wrong code for: ${err.message}`);
    assert.ok(!err.message.includes('\n'), 'the message must be one line');
    if (mentions !== undefined)
      assert.ok(err.message.includes(mentions), `"${err.message}" lacks "${mentions}"`);
    return true;
  });
  assertOutsideUntouched(sb);
  return sb;
}

const file = (name: string | Buffer, data = 'pwned', f: Partial<RawHeaderFields> = {}): Buffer =>
  rawMember({ name, ...own, ...f }, data);
const dir = (name: string): Buffer => rawMember({ name, type: '5', mode: 0o755, ...own });
const symlink = (name: string, target: string): Buffer =>
  rawMember({ name, type: '2', linkname: target, ...own });
const hardlink = (name: string, target: string): Buffer =>
  rawMember({ name, type: '1', linkname: target, ...own });

describe('path escapes', () => {
  it('refuses ".." in a plain header name', async (t) => {
    await refused(
      t,
      rawTar(file('ok'), file('../outside/pwned')),
      'ARCHIVE_PATH_ESCAPE',
      '../outside/pwned',
    );
    await refused(t, rawTar(file('a/../../outside/pwned')), 'ARCHIVE_PATH_ESCAPE');
  });

  it('refuses ".." in a PAX path record', async (t) => {
    await refused(
      t,
      rawTar(paxHeader({ path: '../outside/pwned' }), file('harmless')),
      'ARCHIVE_PATH_ESCAPE',
    );
  });

  it('refuses ".." in a GNU long name', async (t) => {
    const name = `${'d/'.repeat(60)}${'../'.repeat(62)}outside/pwned`;
    await refused(
      t,
      rawTar(gnuLongName(name), file('harmless', 'x', { format: 'gnu' })),
      'ARCHIVE_PATH_ESCAPE',
    );
  });

  it('refuses absolute names in a header, a PAX path and a GNU long name', async (t) => {
    await refused(
      t,
      (sb) => rawTar(file(`${sb.outside}/pwned`)),
      'ARCHIVE_PATH_ESCAPE',
      'absolute',
    );
    await refused(
      t,
      (sb) => rawTar(paxHeader({ path: `${sb.outside}/pwned` }), file('x')),
      'ARCHIVE_PATH_ESCAPE',
    );
    await refused(
      t,
      (sb) =>
        rawTar(gnuLongName(`${sb.outside}/${'p'.repeat(120)}`), file('x', 'x', { format: 'gnu' })),
      'ARCHIVE_PATH_ESCAPE',
    );
  });

  it('refuses an absolute name made of the ustar prefix', async (t) => {
    await refused(
      t,
      rawTar(rawMember({ name: 'pwned', prefix: '/tmp', ...own }, 'x')),
      'ARCHIVE_PATH_ESCAPE',
    );
  });
});

describe('writes through links', () => {
  it('refuses a write through a symlink with an absolute target', async (t) => {
    await refused(
      t,
      (sb) => rawTar(symlink('evil', sb.outside), file('evil/pwned')),
      'ARCHIVE_UNSAFE_LINK',
      'evil',
    );
  });

  it('refuses a write through a symlink with a relative target', async (t) => {
    await refused(
      t,
      rawTar(symlink('evil', '../outside'), file('evil/pwned')),
      'ARCHIVE_UNSAFE_LINK',
    );
  });

  it('refuses chained relative links (a -> ., a/a/a/b -> ../../..)', async (t) => {
    await refused(
      t,
      rawTar(symlink('a', '.'), symlink('a/a/a/b', '../../..'), file('a/a/a/b/outside/pwned')),
      'ARCHIVE_UNSAFE_LINK',
    );
  });

  it('refuses replacing a directory by a symlink of the same name', async (t) => {
    await refused(
      t,
      rawTar(dir('d/'), file('d/inside'), symlink('d', '../outside'), file('d/pwned')),
      'ARCHIVE_CONFLICT',
      "'d'",
    );
  });

  it('refuses a write beneath a link loop', async (t) => {
    await refused(
      t,
      rawTar(symlink('a', 'b'), symlink('b', 'a'), file('a/x')),
      'ARCHIVE_UNSAFE_LINK',
    );
  });

  it('refuses a write beneath a regular file', async (t) => {
    await refused(t, rawTar(file('f'), file('f/x')), 'ARCHIVE_CONFLICT');
  });

  it('refuses replacing a directory by a file', async (t) => {
    await refused(t, rawTar(dir('d/'), file('d')), 'ARCHIVE_CONFLICT');
  });
});

describe('hard links', () => {
  it('refuses a hard link to a path outside the root', async (t) => {
    await refused(t, rawTar(hardlink('h', '../outside/sentinel')), 'ARCHIVE_LINK_ESCAPE');
    await refused(t, (sb) => rawTar(hardlink('h', sb.sentinel)), 'ARCHIVE_LINK_ESCAPE');
  });

  it('refuses a hard link to a symlink, a directory, or a missing path', async (t) => {
    await refused(
      t,
      rawTar(symlink('s', '../outside/sentinel'), hardlink('h', 's')),
      'ARCHIVE_UNSAFE_LINK',
      'symbolic link',
    );
    await refused(t, rawTar(dir('d/'), hardlink('h', 'd')), 'ARCHIVE_UNSAFE_LINK', 'directory');
    await refused(t, rawTar(hardlink('h', 'missing')), 'ARCHIVE_UNSAFE_LINK', 'does not exist');
  });

  it('refuses a hard link whose target path goes through a symlink', async (t) => {
    await refused(
      t,
      rawTar(symlink('s', '../outside'), hardlink('h', 's/sentinel')),
      'ARCHIVE_UNSAFE_LINK',
    );
  });
});

describe('malformed names', () => {
  it('refuses a NUL byte in a GNU long name, a PAX path and a header name field', async (t) => {
    const longName = Buffer.concat([
      Buffer.from('safe'),
      Buffer.of(0),
      Buffer.from('../../outside/pwned'),
    ]);
    await refused(
      t,
      rawTar(gnuLongName(longName), file('x', 'x', { format: 'gnu' })),
      'ARCHIVE_BAD_NAME',
      'NUL',
    );
    await refused(
      t,
      rawTar(paxHeader({ path: 'safe\0../../x' }), file('x')),
      'ARCHIVE_BAD_NAME',
      'NUL',
    );
    const hidden = Buffer.concat([
      Buffer.from('ok'),
      Buffer.of(0),
      Buffer.from('../../outside/pwned'),
    ]);
    await refused(t, rawTar(file(hidden)), 'ARCHIVE_BAD_NAME', 'NUL');
  });

  it('refuses a name that is not valid UTF-8 instead of mangling it', async (t) => {
    await refused(
      t,
      rawTar(file(Buffer.from([0x66, 0xff, 0xfe, 0x2e]))),
      'ARCHIVE_BAD_NAME',
      '\\xff',
    );
  });

  it('refuses empty path components', async (t) => {
    await refused(t, rawTar(file('a//b')), 'ARCHIVE_BAD_NAME', 'empty component');
  });
});

describe('broken archives', () => {
  const two = rawTar(file('one', 'first'), file('two', 'second'));

  it('refuses data that is not a tar', async (t) => {
    const random = Buffer.alloc(4096);
    for (let i = 0; i < random.length; i++) random[i] = (i * 7919 + 13) & 0xff;
    await refused(t, random, 'ARCHIVE_NOT_TAR');
    await refused(t, Buffer.from('hello, world\n'), 'ARCHIVE_NOT_TAR');
    const zstd = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.alloc(2000, 1)]);
    await refused(t, zstd, 'ARCHIVE_NOT_TAR', 'zstd');
    await refused(t, gzip(Buffer.alloc(3000, 0x41)), 'ARCHIVE_NOT_TAR');
  });

  it('refuses an empty object, an empty gzip and an archive with no members', async (t) => {
    await refused(t, Buffer.alloc(0), 'ARCHIVE_EMPTY');
    await refused(t, gzip(Buffer.alloc(0)), 'ARCHIVE_EMPTY');
    await refused(t, endOfArchive(), 'ARCHIVE_EMPTY');
  });

  it('refuses an archive truncated inside a header', async (t) => {
    await refused(t, two.subarray(0, 1024 + 200), 'ARCHIVE_TRUNCATED', 'inside a header');
  });

  it('refuses an archive truncated inside member data', async (t) => {
    const big = rawTar(file('big', 'x'.repeat(5000)));
    await refused(t, big.subarray(0, 512 + 3000), 'ARCHIVE_TRUNCATED', "'big'");
    await refused(t, gzip(big).subarray(0, 40), 'ARCHIVE_TRUNCATED');
  });

  it('refuses a header whose checksum is wrong', async (t) => {
    await refused(t, corruptChecksum(two, 1024), 'ARCHIVE_MALFORMED', 'checksum');
    await refused(t, corruptChecksum(two, 0), 'ARCHIVE_NOT_TAR', 'checksum');
  });

  it('refuses a header declaring more bytes than follow', async (t) => {
    const lying = Buffer.concat([
      rawHeader({ name: 'liar', size: 100_000, ...own }),
      Buffer.alloc(512, 0x61),
      endOfArchive(),
    ]);
    await refused(t, lying, 'ARCHIVE_TRUNCATED', "'liar'");
  });

  it('refuses a stream cut exactly at a member boundary (no end-of-archive marker)', async (t) => {
    await refused(t, two.subarray(0, 2048), 'ARCHIVE_TRUNCATED', 'end-of-archive');
    await refused(t, two.subarray(0, 2048 + 512), 'ARCHIVE_TRUNCATED', 'one of the two');
  });

  it('refuses a lone zero block followed by more members', async (t) => {
    const lone = Buffer.concat([file('one'), Buffer.alloc(512), file('two'), endOfArchive()]);
    await refused(t, lone, 'ARCHIVE_MALFORMED', 'zero block');
  });

  it('refuses unsupported member types', async (t) => {
    await refused(
      t,
      rawTar(rawMember({ name: 'sparse', type: 'S', ...own, format: 'gnu' }, 'x')),
      'ARCHIVE_UNSUPPORTED_ENTRY',
      'sparse',
    );
    await refused(
      t,
      rawTar(paxHeader({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0' }), file('s')),
      'ARCHIVE_UNSUPPORTED_ENTRY',
    );
    await refused(
      t,
      rawTar(rawMember({ name: 'label', type: 'V', ...own, format: 'gnu' })),
      'ARCHIVE_UNSUPPORTED_ENTRY',
      'volume',
    );
    await refused(
      t,
      rawTar(rawMember({ name: 'cont', type: 'M', ...own, format: 'gnu' })),
      'ARCHIVE_UNSUPPORTED_ENTRY',
    );
  });

  it('refuses a malformed PAX record', async (t) => {
    const bad = rawMember({ name: 'PaxHeader/x', type: 'x' }, '99 path=x\n');
    await refused(t, rawTar(bad, file('x')), 'ARCHIVE_MALFORMED', 'PAX');
  });

  it('refuses a header with a garbage number field', async (t) => {
    const header = rawHeader({ name: 'x', ...own });
    header.write('12x45670', 124, 'latin1');
    await refused(
      t,
      Buffer.concat([sealHeader(header), endOfArchive()]),
      'ARCHIVE_MALFORMED',
      'size',
    );
  });
});

describe('limits', () => {
  it('stops a gzip bomb at the content limit, before writing it', async (t) => {
    const bomb = gzip(
      await packTar([{ name: 'zeros', ...own, content: Buffer.alloc(48 * 1024 * 1024) }]),
    );
    assert.ok(bomb.length < 200_000, `the bomb should be small, is ${bomb.length}`);
    const sb = await refused(t, bomb, 'LIMIT_UNPACKED_BYTES', "'zeros'", {
      maxUnpackedBytes: 8 * 1024 * 1024,
    });
    assert.deepEqual(fs.readdirSync(sb.root), []);
  });

  it('counts content across members', async (t) => {
    const archive = rawTar(file('a', 'x'.repeat(600)), file('b', 'y'.repeat(600)));
    await refused(t, archive, 'LIMIT_UNPACKED_BYTES', "'b'", { maxUnpackedBytes: 1000 });
  });

  it('limits the number of members', async (t) => {
    const archive = rawTar(file('1'), file('2'), file('3'), file('4'));
    await refused(t, archive, 'LIMIT_ENTRY_COUNT', "'4'", { maxEntries: 3 });
  });

  it('limits path length and depth', async (t) => {
    await refused(t, rawTar(file('a'.repeat(21))), 'LIMIT_PATH_LENGTH', undefined, {
      maxPathLength: 20,
    });
    await refused(t, rawTar(file('a/b/c/d')), 'LIMIT_PATH_DEPTH', "'a/b/c/d'", { maxPathDepth: 3 });
    await refused(t, rawTar(symlink('s', 'x'.repeat(30))), 'LIMIT_PATH_LENGTH', undefined, {
      maxPathLength: 20,
    });
  });
});

describe('legitimate archives are not refused', () => {
  it('keeps absolute and dangling symlink targets verbatim', async (t) => {
    const sb = sandbox(t);
    const archive = rawTar(
      symlink('etc/alternatives/editor', '/usr/bin/vim.basic'),
      symlink('up', '../../../../etc/shadow'),
      symlink('self', 'self'),
    );
    await unpack(sb, archive);
    assert.equal(
      fs.readlinkSync(path.join(sb.root, 'etc/alternatives/editor')),
      '/usr/bin/vim.basic',
    );
    assert.equal(fs.readlinkSync(path.join(sb.root, 'up')), '../../../../etc/shadow');
    assertOutsideUntouched(sb);
  });

  it('accepts "./" prefixes, "." components, a "./" root entry and a lost+found entry', async (t) => {
    const sb = sandbox(t);
    fs.mkdirSync(path.join(sb.root, 'lost+found'));
    const archive = rawTar(
      dir('./'),
      dir('./lost+found/'),
      file('./a/./b', 'ok'),
      hardlink('./c', './a/b'),
    );
    await unpack(sb, archive);
    assert.equal(fs.readFileSync(path.join(sb.root, 'a/b'), 'utf8'), 'ok');
    assert.equal(fs.statSync(path.join(sb.root, 'c')).nlink, 2);
    assertOutsideUntouched(sb);
  });
});
