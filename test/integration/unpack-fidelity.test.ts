/**
 * Fidelity: what unpackArchive writes must equal, entry for entry, what
 * `tar --numeric-owner --xattrs -xpf` (GNU tar, as root; with security.capability included) extracts from the
 * same bytes. Needs root (ownership, device nodes).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { unpackArchive, type UnpackStats } from '../../host-agent/src/layer/index.js';
import {
  chunked,
  gnuLongName,
  gzip,
  packTar,
  paxHeader,
  rawMember,
  type PackEntry,
} from '../helpers/tar-fixtures.js';
import { compareTrees } from '../helpers/tree-compare.js';

const needsRoot = process.getuid?.() === 0 ? false : 'needs root (ownership, mknod, setuid bits)';

const limits = {
  maxUnpackedBytes: 1024 ** 3,
  maxEntries: 100_000,
  maxPathLength: 4095,
  maxPathDepth: 256,
};

const T0 = 1_600_000_000;

let sandbox = '';
let savedUmask = 0;
let runs = 0;

before(() => {
  sandbox = fs.mkdtempSync(path.join(os.tmpdir(), 'thinrelay-fidelity-'));
  // Implied directories get 0777 less the umask, with GNU tar as with us: pin it for both.
  savedUmask = process.umask(0o022);
});

after(() => {
  process.umask(savedUmask);
  fs.rmSync(sandbox, { recursive: true, force: true });
});

function freshDir(name: string): string {
  const dir = path.join(sandbox, `${name}-${++runs}`);
  fs.mkdirSync(dir);
  return dir;
}

async function gnuExtract(archive: Buffer): Promise<string> {
  const dir = freshDir('gnu');
  // user.* is GNU tar's default; security.capability is restored as container runtimes do.
  const include = ['--xattrs-include=user.*', '--xattrs-include=security.capability'];
  await execa('tar', ['--numeric-owner', '--xattrs', ...include, '-xpf', '-', '-C', dir], {
    input: archive,
    env: { LC_ALL: 'C' },
  });
  return dir;
}

async function ourExtract(
  archive: Buffer,
  chunkSize?: number,
): Promise<{ dir: string; stats: UnpackStats }> {
  const dir = freshDir('ours');
  const stats = await unpackArchive(chunked(archive, chunkSize), { root: dir, limits });
  return { dir, stats };
}

async function assertSameTree(
  expected: string,
  actual: string,
  ignoreMtime: string[] = [],
): Promise<void> {
  const diffs = await compareTrees(expected, actual, {
    ignoreMtime: (rel) => ignoreMtime.includes(rel),
  });
  assert.deepEqual(diffs, [], `trees differ:\n${diffs.join('\n')}`);
}

/**
 * Entries tar-stream can write itself (long names become PAX path records).
 * Each directory's members are contiguous, as in any archive tar -c made:
 * GNU tar sets a directory's time as soon as extraction leaves it, so a
 * member added to it later would change that time, where we apply every
 * directory's time at the very end.
 */
function packedEntries(): PackEntry[] {
  const m = (mtime: number): Date => new Date(mtime * 1000);
  return [
    { name: './', type: 'directory', mode: 0o755, mtime: m(T0) },
    { name: 'etc', type: 'directory', mode: 0o755, mtime: m(T0 + 1) },
    { name: 'etc/passwd', mode: 0o644, mtime: m(T0 + 2), content: 'root:x:0:0::/root:/bin/sh\n' },
    {
      name: 'etc/alternatives/editor',
      type: 'symlink',
      linkname: '/usr/bin/vim.basic',
      mtime: m(T0 + 11),
    },
    { name: 'etc/loop', type: 'symlink', linkname: 'loop', mtime: m(T0 + 12) },
    { name: 'usr/bin/sudo', mode: 0o4755, mtime: m(T0 + 3), content: 'setuid' },
    { name: 'usr/bin/wall', mode: 0o2755, gid: 5, mtime: m(T0 + 4), content: 'setgid' },
    { name: 'tmp', type: 'directory', mode: 0o1777, mtime: m(T0 + 5) },
    { name: 'srv', type: 'directory', mode: 0o3775, gid: 50, mtime: m(T0 + 5) },
    { name: 'home/user', type: 'directory', mode: 0o700, uid: 1000, gid: 1000, mtime: m(T0 + 6) },
    {
      name: 'home/user/.profile',
      mode: 0o600,
      uid: 1000,
      gid: 1000,
      mtime: m(T0 + 7),
      content: 'x=1\n',
    },
    {
      name: 'data/odd',
      mode: 0o640,
      uid: 65534,
      gid: 65533,
      mtime: m(T0 + 8),
      content: 'odd owners',
    },
    { name: 'data/empty-dir', type: 'directory', mode: 0o750, mtime: m(T0 + 9) },
    { name: 'data/empty-file', mode: 0o444, mtime: m(T0 + 9), content: '' },
    { name: 'data/hard1', mode: 0o644, mtime: m(T0 + 10), content: 'shared inode' },
    { name: 'data/hard2', type: 'link', linkname: 'data/hard1', mtime: m(T0 + 10) },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib', uid: 7, gid: 8, mtime: m(T0 + 12) },
    {
      name: 'dev/null',
      type: 'character-device',
      mode: 0o666,
      devmajor: 1,
      devminor: 3,
      mtime: m(T0 + 13),
    },
    {
      name: 'dev/sda',
      type: 'block-device',
      mode: 0o660,
      gid: 6,
      devmajor: 8,
      devminor: 0,
      mtime: m(T0 + 13),
    },
    { name: 'dev/null-again', type: 'link', linkname: 'dev/null', mtime: m(T0 + 13) },
    { name: 'run/initctl', type: 'fifo', mode: 0o600, mtime: m(T0 + 14) },
    { name: `deep/${'p'.repeat(120)}/file`, mode: 0o644, mtime: m(T0 + 15), content: 'pax path' },
    { name: 'big', mode: 0o644, mtime: m(T0 + 16), content: Buffer.alloc(300_000, 7) },
  ];
}

/** What tar-stream cannot write: GNU long names, binary and odd xattrs, ns and negative times, big ids, repeats. */
function rawEntries(): Buffer[] {
  const longGnu = `gnu/${'g'.repeat(150)}`;
  return [
    gnuLongName(longGnu),
    rawMember({ name: longGnu.slice(0, 99), mtime: T0 + 20, format: 'gnu' }, 'gnu long name'),
    gnuLongName(`/opt/${'t'.repeat(140)}`, 'K'),
    rawMember({
      name: 'gnu-long-link',
      type: '2',
      linkname: 'ignored',
      mtime: T0 + 21,
      format: 'gnu',
    }),
    paxHeader({
      path: `pax/${'q'.repeat(130)}`,
      mtime: '1700000000.123456789',
      uid: '3000000',
      gid: '3000001',
      'SCHILY.xattr.user.comment': 'hello',
      'SCHILY.xattr.user.binary': Buffer.from([0, 1, 0xff, 0x3d, 0x0a]),
      'SCHILY.xattr.user.a%3Db%25c': 'escaped name',
      'SCHILY.xattr.user.empty': '',
      'SCHILY.xattr.trusted.secret': 'not restored by default',
      'SCHILY.xattr.security.capability': Buffer.from(
        '0100000200200000000000000000000000000000',
        'hex',
      ),
    }),
    rawMember({ name: 'placeholder', mode: 0o755 }, 'pax record overrides'),
    paxHeader({ mtime: '1700000001.5', 'SCHILY.xattr.user.dir': 'yes' }),
    rawMember({ name: 'xdir/', type: '5', mode: 0o711 }),
    paxHeader({ mtime: '-86400.25' }),
    rawMember({ name: 'xdir/before-1970', mode: 0o600 }, 'old'),
    paxHeader({ mtime: '1700000002.000123' }),
    rawMember({ name: 'xdir/microseconds', mode: 0o600 }, 'µs'),
    // A directory listed twice: the later mode and time win, xattrs add up (GNU tar).
    paxHeader({ 'SCHILY.xattr.user.first': '1' }),
    rawMember({ name: 'twice/', type: '5', mode: 0o700, mtime: T0 + 30 }),
    paxHeader({ 'SCHILY.xattr.user.second': '2' }),
    rawMember({ name: 'twice/', type: '5', mode: 0o755, mtime: T0 + 31 }),
    // A file listed twice: replaced by a new inode.
    rawMember({ name: 'twice/file', mtime: T0 + 32 }, 'first version'),
    rawMember({ name: 'twice/file', mtime: T0 + 33, mode: 0o640 }, 'second'),
    // The first name of a hard-linked inode replaced: the link keeps the old inode, xattrs and time.
    paxHeader({ mtime: '1700000003.999999999', 'SCHILY.xattr.user.orig': 'kept' }),
    rawMember({ name: 'relink/orig', mtime: T0 }, 'old inode'),
    rawMember({ name: 'relink/link', type: '1', linkname: 'relink/orig' }),
    rawMember({ name: 'relink/orig', mtime: T0 + 40 }, 'new inode'),
    // Old-style directory: a regular-file typeflag with a trailing slash.
    rawMember({ name: 'oldstyle/', type: '0', mode: 0o755, mtime: T0 + 41 }),
    rawMember({ name: './dotted/./name', mtime: T0 + 42 }, 'dot components'),
  ];
}

/** Directories only implied by member paths: created "now" by both, so their mtimes differ. */
const impliedDirs = [
  'usr',
  'usr/bin',
  'home',
  'data',
  'etc/alternatives',
  'dev',
  'run',
  'deep',
  `deep/${'p'.repeat(120)}`,
  'gnu',
  'pax',
  'relink',
  'dotted',
];

describe('unpack fidelity against GNU tar', { skip: needsRoot }, () => {
  let archive = Buffer.alloc(0);

  before(async () => {
    const packed = await packTar(packedEntries());
    archive = Buffer.concat([...rawEntries(), packed]);
  });

  it('extracts every entry type and attribute exactly as GNU tar does', async () => {
    const expected = await gnuExtract(archive);
    const { dir, stats } = await ourExtract(archive);
    await assertSameTree(expected, dir, impliedDirs);
    assert.equal(stats.compression, 'none');
    assert.equal(stats.devices, 2);
    assert.equal(stats.fifos, 1);
    assert.equal(stats.hardlinks, 3);
    // The checks above are only as good as the compare: make sure it saw what matters.
    assert.equal(fs.readlinkSync(path.join(dir, 'etc/alternatives/editor')), '/usr/bin/vim.basic');
    assert.equal(fs.statSync(path.join(dir, 'usr/bin/sudo')).mode & 0o7777, 0o4755);
    const pax = fs.statSync(path.join(dir, `pax/${'q'.repeat(130)}`), { bigint: true });
    assert.equal(pax.uid, 3000000n);
    assert.equal(pax.mtimeNs, 1700000000123456789n);
    assert.equal(
      fs.statSync(path.join(dir, 'xdir/before-1970'), { bigint: true }).mtimeNs,
      -86400250000000n,
    );
  });

  it('reads the same archive gzip-compressed, in odd-sized chunks', async () => {
    const expected = await gnuExtract(archive);
    const { dir, stats } = await ourExtract(gzip(archive), 1000);
    assert.equal(stats.compression, 'gzip');
    await assertSameTree(expected, dir, impliedDirs);
  });

  it('matches GNU tar on a GNU-tar-made archive of a tree with every feature (posix and gnu formats)', async () => {
    const src = freshDir('src');
    await buildFeatureTree(src);
    for (const format of ['posix', 'gnu']) {
      const xattrs = format === 'posix' ? ['--xattrs'] : [];
      const { stdout } = await execa(
        'tar',
        ['--numeric-owner', ...xattrs, `--format=${format}`, '-cf', '-', '-C', src, '.'],
        { encoding: 'buffer', env: { LC_ALL: 'C' } },
      );
      const made = Buffer.from(stdout);
      const expected = await gnuExtract(made);
      const { dir } = await ourExtract(made, 65536);
      await assertSameTree(expected, dir);
    }
  });

  it('matches GNU tar on a real directory of this machine (/etc)', async () => {
    const { stdout } = await execa(
      'tar',
      ['--numeric-owner', '--xattrs', '-cf', '-', '-C', '/', 'etc'],
      { encoding: 'buffer', reject: false, env: { LC_ALL: 'C' } },
    );
    const made = Buffer.from(stdout);
    const expected = await gnuExtract(made);
    const { dir, stats } = await ourExtract(made, 65536);
    assert.ok(stats.entries > 100, `expected a real /etc, got ${stats.entries} entries`);
    // The extraction directory itself is not in the archive: tar leaves its time alone.
    await assertSameTree(expected, dir, ['.']);
  });
});

/** A source tree with every feature, for GNU tar to archive. */
async function buildFeatureTree(src: string): Promise<void> {
  const p = (rel: string): string => path.join(src, rel);
  fs.mkdirSync(p('bin'), { recursive: true });
  fs.writeFileSync(p('bin/tool'), 'tool');
  fs.chmodSync(p('bin/tool'), 0o4755);
  fs.mkdirSync(p('share/empty'), { recursive: true });
  fs.mkdirSync(p('sticky'), { mode: 0o1777 });
  fs.chmodSync(p('sticky'), 0o1777);
  fs.writeFileSync(p('share/owned'), 'owned');
  fs.chownSync(p('share/owned'), 12345, 54321);
  fs.writeFileSync(p('share/hard'), 'hard');
  fs.linkSync(p('share/hard'), p('share/hard-link'));
  fs.symlinkSync('/etc/alternatives/pager', p('share/abs-link'));
  fs.symlinkSync('../bin/tool', p('share/rel-link'));
  fs.symlinkSync('dangling/nowhere', p('share/dangling'));
  const long = p(`share/${'l'.repeat(120)}`);
  fs.mkdirSync(long);
  fs.writeFileSync(path.join(long, `${'n'.repeat(110)}.txt`), 'long');
  fs.writeFileSync(p('share/xattrs'), 'xattrs');
  await execa('setfattr', ['-n', 'user.mime_type', '-v', 'text/plain', p('share/xattrs')]);
  await execa('setfattr', ['-n', 'user.bin', '-v', '0x00ff10', p('share/xattrs')]);
  await execa('setfattr', ['-n', 'user.on-dir', '-v', 'd', p('share')]);
  await execa('mkfifo', [p('share/fifo')]);
  await execa('mknod', [p('share/tty'), 'c', '5', '0']);
  fs.writeFileSync(p('share/ünïcödé ✓'), 'utf-8 name');
  fs.utimesSync(p('share/empty'), T0, T0);
  fs.lutimesSync(p('share/rel-link'), T0, T0 + 1);
}

describe('tree-compare (the yardstick of the tests above)', () => {
  it('notices each kind of difference', async () => {
    const mutations: Array<[string, (dir: string) => void | Promise<unknown>]> = [
      ['mode', (d) => fs.chmodSync(path.join(d, 'f'), 0o4644)],
      ['sha256', (d) => fs.writeFileSync(path.join(d, 'f'), 'other')],
      ['mtime', (d) => fs.utimesSync(path.join(d, 'sub'), T0, T0 + 1)],
      ['mtime', (d) => fs.lutimesSync(path.join(d, 'link'), T0, T0 + 1)],
      [
        'target',
        (d) => (
          fs.unlinkSync(path.join(d, 'link')),
          fs.symlinkSync('/elsewhere', path.join(d, 'link'))
        ),
      ],
      [
        'hard links',
        (d) => (
          fs.unlinkSync(path.join(d, 'h')),
          fs.copyFileSync(path.join(d, 'f'), path.join(d, 'h'))
        ),
      ],
      ['xattrs', (d) => execa('setfattr', ['-n', 'user.k', '-v', 'changed', path.join(d, 'f')])],
      ['missing', (d) => fs.rmSync(path.join(d, 'sub/empty'), { recursive: true })],
      ['unexpected', (d) => fs.writeFileSync(path.join(d, 'extra'), '')],
    ];
    for (const [field, mutate] of mutations) {
      const a = freshDir('cmp-a');
      fs.writeFileSync(path.join(a, 'f'), 'content');
      fs.linkSync(path.join(a, 'f'), path.join(a, 'h'));
      fs.symlinkSync('/target', path.join(a, 'link'));
      fs.mkdirSync(path.join(a, 'sub/empty'), { recursive: true });
      await execa('setfattr', ['-n', 'user.k', '-v', 'v', path.join(a, 'f')]);
      fs.utimesSync(path.join(a, 'sub'), T0, T0);
      fs.lutimesSync(path.join(a, 'link'), T0, T0);
      const b = freshDir('cmp-b');
      await execa('cp', ['-a', '--preserve=all', `${a}/.`, b]);
      assert.deepEqual(await compareTrees(a, b, { ignoreMtime: (rel) => rel === '.' }), []);
      await mutate(b);
      const diffs = await compareTrees(a, b, { ignoreMtime: (rel) => rel === '.' });
      assert.ok(
        diffs.some((d) => d.includes(field)),
        `${field} not noticed: ${diffs.join('; ')}`,
      );
    }
  });
});
