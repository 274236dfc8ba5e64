/**
 * The lower layers as the path model sees them: one lstat per path, never
 * following a link (the model asks only for paths whose ancestors it knows to
 * be real directories). Each lower directory's mtime is kept as found, so it
 * can be put back once the layer has added or removed entries in it, as
 * umoci does: a directory the layer does not list keeps the lower layer's time.
 */
import fs from 'node:fs';
import { ImageError } from '../errors.js';
import { fsFailure } from './entry-writer.js';
import { absolutePath } from './metadata.js';
import type { LowerTree, NodeKind } from './path-policy.js';
import type { Timestamp } from './times.js';

const NS = 1_000_000_000n;

function timestampOf(ns: bigint): Timestamp {
  let sec = ns / NS;
  let nsec = ns % NS;
  if (nsec < 0n) {
    sec -= 1n;
    nsec += NS;
  }
  return { sec: Number(sec), nsec: Number(nsec) };
}

function kindOf(st: fs.BigIntStats): NodeKind {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  return 'special';
}

export class DiskLowerTree implements LowerTree {
  /** Root-relative path → mtime as the lower layers left it. */
  readonly directoryTimes = new Map<string, Timestamp>();

  constructor(private readonly root: string) {
    const st = fs.lstatSync(root, { bigint: true });
    if (!st.isDirectory()) throw new ImageError('STORAGE_FAILED', `${root} is not a directory`);
    this.directoryTimes.set('', timestampOf(st.mtimeNs));
  }

  kindOf(path: string): NodeKind | undefined {
    let st: fs.BigIntStats | undefined;
    try {
      st = fs.lstatSync(absolutePath(this.root, path), { bigint: true, throwIfNoEntry: false });
    } catch (err) {
      throw fsFailure(err, 'lstat', path);
    }
    if (st === undefined) return undefined;
    const kind = kindOf(st);
    if (kind === 'dir') this.directoryTimes.set(path, timestampOf(st.mtimeNs));
    return kind;
  }
}
