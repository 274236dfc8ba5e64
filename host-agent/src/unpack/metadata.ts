/**
 * Metadata applied at the end of the unpack: directory owner/mode/time
 * (creating entries in a directory changes its mtime, so it can only be set
 * once all of them exist) and extended attributes (Node has no xattr API:
 * one `setfattr --restore` run for the whole tree).
 */
import { setPathMetadata, type Ownership } from './entry-writer.js';
import { nodeSeconds, type ExactTimes, type Timestamp } from './times.js';
import { runTool } from './tools.js';

export interface EntryMetadata extends Ownership {
  mtime: Timestamp;
}

/** Root-relative path → absolute ("" is the root itself); `root` is already resolved. */
export function absolutePath(root: string, path: string): string {
  return path === '' ? root : `${root}/${path}`;
}

function depth(path: string): number {
  let n = 0;
  for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1)) n++;
  return path === '' ? -1 : n;
}

/** Directories' metadata, deferred until every child exists. */
export class DirectoryMetadata {
  private readonly dirs = new Map<string, EntryMetadata>();

  /** A directory listed twice takes the later member's owner, mode and time, as with GNU tar. */
  set(path: string, meta: EntryMetadata): void {
    this.dirs.set(path, meta);
  }

  has(path: string): boolean {
    return this.dirs.has(path);
  }

  /** The directory was removed (layer mode): nothing to apply. */
  delete(path: string): void {
    this.dirs.delete(path);
  }

  /** Deepest first, the root (a "./" member) last. */
  ordered(): Array<{ path: string; meta: EntryMetadata }> {
    const byDepth = [...this.dirs].map(([path, meta]) => ({ path, meta, depth: depth(path) }));
    byDepth.sort((a, b) => b.depth - a.depth);
    return byDepth;
  }

  apply(root: string, atime: number, exactTimes: ExactTimes): void {
    for (const { path, meta } of this.ordered()) {
      const abs = absolutePath(root, path);
      const seconds = nodeSeconds(meta.mtime);
      setPathMetadata(abs, meta, true, atime, seconds, path === '' ? './' : path);
      if (seconds === undefined) exactTimes.set(abs, meta.mtime);
    }
  }
}

/**
 * Which archived xattrs are restored: GNU tar 1.34 with --xattrs and no
 * --xattrs-include restores only the user.* namespace on extraction
 * (xattrs_kw_included); security.*, trusted.* and system.* need explicit
 * include patterns there, and are left out here too, except
 * security.capability, which container runtimes restore (file capabilities,
 * e.g. on ping); it is set after the owner, whose change would clear it.
 */
export function restorableXattrs(
  all: ReadonlyMap<string, Buffer>,
): Map<string, Buffer> | undefined {
  let kept: Map<string, Buffer> | undefined;
  for (const [name, value] of all) {
    if (!name.startsWith('user.') && name !== 'security.capability') continue;
    kept ??= new Map();
    kept.set(name, value);
  }
  return kept;
}

const BACKSLASH = 0x5c;
const EQUALS = 0x3d;

/** getfattr's dump quoting, which setfattr --restore undoes: \ooo for anything unsafe on its line. */
function dumpQuote(bytes: Buffer): string {
  let out = '';
  for (const b of bytes) {
    out +=
      b > 0x20 && b < 0x7f && b !== BACKSLASH && b !== EQUALS
        ? String.fromCharCode(b)
        : `\\${b.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/** Extended attributes per path; names are latin1 strings holding the archive's raw bytes. */
export class XattrPlan {
  private readonly byPath = new Map<string, Map<string, Buffer>>();

  /** A new inode: only its own attributes. */
  set(path: string, xattrs: Map<string, Buffer>): void {
    this.byPath.set(path, xattrs);
  }

  /** Directory over directory: GNU tar ends up with both members' attributes. */
  merge(path: string, xattrs: Map<string, Buffer>): void {
    const existing = this.byPath.get(path);
    if (existing === undefined) this.byPath.set(path, xattrs);
    else for (const [name, value] of xattrs) existing.set(name, value);
  }

  /** `path` was replaced: its attributes stay with the old inode, at `to` if it has another name. */
  move(path: string, to: string | undefined): void {
    const xattrs = this.byPath.get(path);
    if (xattrs === undefined) return;
    this.byPath.delete(path);
    if (to !== undefined) this.byPath.set(to, xattrs);
  }

  /** Values in hex: the one dump encoding that also round-trips an empty value. */
  dump(root: string): string {
    let text = '';
    for (const [path, xattrs] of this.byPath) {
      text += `# file: ${dumpQuote(Buffer.from(absolutePath(root, path)))}\n`;
      for (const [name, value] of xattrs) {
        text += `${dumpQuote(Buffer.from(name, 'latin1'))}=0x${value.toString('hex')}\n`;
      }
      text += '\n';
    }
    return text;
  }

  async apply(root: string, signal?: AbortSignal): Promise<void> {
    if (this.byPath.size === 0) return;
    const input = Buffer.from(this.dump(root));
    await runTool('setfattr', ['-h', '--restore=-'], input, 'restore extended attributes', signal);
  }
}
