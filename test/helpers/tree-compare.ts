/**
 * Compares two extracted trees entry by entry: type, mode (with setuid,
 * setgid, sticky), uid, gid, size, content hash, mtime (directories and
 * symlinks too), symlink target, device numbers, hard-link grouping and
 * extended attributes (every namespace, via getfattr). Used by the
 * unpacker's fidelity tests and by the benchmark.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { execa } from 'execa';

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  mtimeNs: bigint;
  rdev: bigint;
  ino: bigint;
  nlink: bigint;
  target?: string;
  sha256?: string;
  /** name → hex value */
  xattrs: Record<string, string>;
}

export interface CompareOptions {
  /** Paths (relative, '.' for the root) left out entirely, e.g. lost+found. */
  skip?: (rel: string) => boolean;
  /** Paths whose mtime is not compared (directories tar creates implicitly get "now"). */
  ignoreMtime?: (rel: string) => boolean;
}

function typeOf(st: fs.BigIntStats): TreeEntry['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

function hashFile(path: string): string {
  const hash = createHash('sha256');
  const fd = fs.openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let n = fs.readSync(fd, buf); n > 0; n = fs.readSync(fd, buf))
      hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/** getfattr's \ooo quoting, undone. */
function unquote(text: string): string {
  const bytes: number[] = [];
  const raw = Buffer.from(text, 'latin1');
  for (let i = 0; i < raw.length; i++) {
    const m = /^\\([0-7]{3})/.exec(raw.toString('latin1', i, i + 4));
    if (m !== null) {
      bytes.push(parseInt(m[1]!, 8));
      i += 3;
    } else bytes.push(raw[i]!);
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Every xattr of every entry under root, in all namespaces, without following symlinks. */
async function readXattrs(root: string): Promise<Map<string, Record<string, string>>> {
  const { stdout } = await execa(
    'getfattr',
    ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root],
    { encoding: 'latin1', reject: false, env: { LC_ALL: 'C' } },
  );
  const result = new Map<string, Record<string, string>>();
  let current: Record<string, string> | undefined;
  for (const line of stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      current = {};
      result.set(unquote(line.slice(8)), current);
    } else if (current !== undefined && line.includes('=')) {
      const eq = line.indexOf('=');
      current[unquote(line.slice(0, eq))] = line.slice(eq + 1);
    }
  }
  return result;
}

/** Every entry under root (root itself as '.'), keyed by relative path. */
export async function snapshotTree(
  root: string,
  opts: CompareOptions = {},
): Promise<Map<string, TreeEntry>> {
  const entries = new Map<string, TreeEntry>();
  const xattrs = await readXattrs(root);
  const walk = (rel: string): void => {
    if (opts.skip?.(rel) === true) return;
    const abs = rel === '.' ? root : `${root}/${rel}`;
    const st = fs.lstatSync(abs, { bigint: true });
    const entry: TreeEntry = {
      type: typeOf(st),
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: st.isDirectory() ? 0n : st.size,
      mtimeNs: st.mtimeNs,
      rdev: st.rdev,
      ino: st.ino,
      nlink: st.nlink,
      xattrs: xattrs.get(abs) ?? {},
    };
    if (entry.type === 'symlink') entry.target = fs.readlinkSync(abs);
    if (entry.type === 'file') entry.sha256 = hashFile(abs);
    entries.set(rel, entry);
    if (entry.type === 'dir') {
      for (const name of fs.readdirSync(abs).sort()) walk(rel === '.' ? name : `${rel}/${name}`);
    }
  };
  walk('.');
  return entries;
}

/** For each path, the other paths sharing its inode (empty when not hard-linked). */
function linkGroups(tree: Map<string, TreeEntry>): Map<string, string> {
  const byInode = new Map<bigint, string[]>();
  for (const [rel, e] of tree) {
    if (e.type === 'dir') continue;
    const group = byInode.get(e.ino) ?? [];
    group.push(rel);
    byInode.set(e.ino, group);
  }
  const result = new Map<string, string>();
  for (const group of byInode.values()) {
    for (const rel of group)
      result.set(
        rel,
        group
          .filter((r) => r !== rel)
          .sort()
          .join(', '),
      );
  }
  return result;
}

const compared: Array<keyof TreeEntry> = [
  'type',
  'mode',
  'uid',
  'gid',
  'size',
  'sha256',
  'target',
  'rdev',
];

function show(field: keyof TreeEntry, value: unknown): string {
  if (field === 'mode' && typeof value === 'number') return `0${value.toString(8)}`;
  return typeof value === 'bigint' ? value.toString() : JSON.stringify(value);
}

function sortedXattrs(xattrs: Record<string, string>): string {
  return JSON.stringify(Object.entries(xattrs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** One line per difference between the two snapshots; empty when the trees are equal. */
export function diffSnapshots(
  expected: Map<string, TreeEntry>,
  actual: Map<string, TreeEntry>,
  opts: CompareOptions = {},
): string[] {
  const diffs: string[] = [];
  const expectedLinks = linkGroups(expected);
  const actualLinks = linkGroups(actual);
  for (const [rel, want] of expected) {
    const got = actual.get(rel);
    if (got === undefined) {
      diffs.push(`${rel}: missing (expected ${want.type})`);
      continue;
    }
    for (const field of compared) {
      if (field === 'rdev' && want.type !== 'char' && want.type !== 'block') continue;
      if (want[field] !== got[field]) {
        diffs.push(
          `${rel}: ${field} expected ${show(field, want[field])}, got ${show(field, got[field])}`,
        );
      }
    }
    if (opts.ignoreMtime?.(rel) !== true && want.mtimeNs !== got.mtimeNs) {
      diffs.push(`${rel}: mtime expected ${want.mtimeNs}ns, got ${got.mtimeNs}ns`);
    }
    if (sortedXattrs(want.xattrs) !== sortedXattrs(got.xattrs)) {
      diffs.push(
        `${rel}: xattrs expected ${sortedXattrs(want.xattrs)}, got ${sortedXattrs(got.xattrs)}`,
      );
    }
    if (expectedLinks.get(rel) !== actualLinks.get(rel)) {
      diffs.push(
        `${rel}: hard links expected [${expectedLinks.get(rel) ?? ''}], got [${actualLinks.get(rel) ?? ''}]`,
      );
    }
  }
  for (const [rel, got] of actual) {
    if (!expected.has(rel)) diffs.push(`${rel}: unexpected ${got.type}`);
  }
  return diffs;
}

/** Walks both trees and returns every difference (empty array: equal). */
export async function compareTrees(
  expectedRoot: string,
  actualRoot: string,
  opts: CompareOptions = {},
): Promise<string[]> {
  const [expected, actual] = await Promise.all([
    snapshotTree(expectedRoot, opts),
    snapshotTree(actualRoot, opts),
  ]);
  return diffSnapshots(expected, actual, opts);
}
