/**
 * Metadata applied at the end of the unpack: directory owner/mode/time
 * (creating entries in a directory changes its mtime, so it can only be set
 * once all of them exist) and extended attributes (Node has no xattr API:
 * one `setfattr --restore` run for the whole tree).
 */
import { EnvironmentError, ImageError } from '../errors.js';
import { printable } from './printable.js';
import { setPathMetadata, type Ownership } from './entry-writer.js';
import { nodeSeconds, type ExactTimes, type Timestamp } from './times.js';
import { run } from '../sys/exec.js';
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

/** Whether an xattr name is one restorableXattrs keeps (names are latin1 strings of raw bytes). */
export function isRestorableXattr(name: string): boolean {
  return name.startsWith('user.') || name === 'security.capability';
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
  member: string,
): Map<string, Buffer> | undefined {
  let kept: Map<string, Buffer> | undefined;
  let cost = EXT4_XATTR_BLOCK_OVERHEAD;
  for (const [name, value] of all) {
    if (!isRestorableXattr(name)) continue;
    kept ??= new Map();
    kept.set(name, value);
    cost += ext4XattrEntryBytes(name, value);
  }
  if (cost > EXT4_XATTR_BLOCK_BYTES) {
    // setfattr would fail with ENOSPC (or E2BIG) on every host: the image, not the host.
    throw new ImageError(
      'LIMIT_XATTR_SIZE',
      `member ${printable(member)}: its extended attributes need ${cost} bytes, more than the ${EXT4_XATTR_BLOCK_BYTES}-byte block an ext4 volume holds them in`,
    );
  }
  return kept;
}

/**
 * Volumes are ext4 with 4 KiB blocks and no ea_inode: a file's xattrs live
 * in its inode's spare bytes and one block (a 32-byte header and a 4-byte
 * end marker). Counting only the block refuses nothing that fits in it.
 */
const EXT4_XATTR_BLOCK_BYTES = 4096;
const EXT4_XATTR_BLOCK_OVERHEAD = 32 + 4;

/** One entry's size in an ext4 xattr block: a 16-byte header, name (without its namespace prefix) and value, each padded to 4. */
function ext4XattrEntryBytes(name: string, value: Buffer): number {
  const round4 = (n: number): number => Math.ceil(n / 4) * 4;
  const prefix = name.startsWith('user.') ? 'user.'.length : 'security.'.length;
  return 16 + round4(Buffer.byteLength(name, 'latin1') - prefix) + round4(value.length);
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

/*
 * For each NUL-separated path on stdin: llistxattr, then lremovexattr of
 * every name in the restorable namespaces (isRestorableXattr). Never follows
 * a link; the buffer is the kernel's limit for a name list.
 */
const PERL_CLEAR_XATTRS = [
  'my ($list, $remove) = @ARGV; $/ = "\\0";',
  'while (defined(my $path = <STDIN>)) {',
  '  chomp $path; my $buf = "\\0" x 65536;',
  '  my $n = syscall($list + 0, $path, $buf, 65536);',
  '  $n >= 0 or die "llistxattr $path: $!\\n";',
  '  for my $name (split /\\0/, substr($buf, 0, $n)) {',
  '    next unless $name =~ /^user\\./ || $name eq "security.capability";',
  '    syscall($remove + 0, $path, $name) == 0 or die "lremovexattr $path $name: $!\\n";',
  '  }',
  '}',
].join('\n');

const XATTR_SYSCALLS: Partial<
  Record<NodeJS.Architecture, { llistxattr: number; lremovexattr: number }>
> = {
  x64: { llistxattr: 195, lremovexattr: 198 },
  arm64: { llistxattr: 12, lremovexattr: 15 },
};

/** The same with getfattr and setfattr: one process per path, the fallback only. */
async function clearWithTools(paths: readonly string[], signal?: AbortSignal): Promise<void> {
  for (const path of paths) {
    const listing = await run('getfattr', ['-h', '--absolute-names', '-m', '-', '--', path], {
      signal,
    });
    for (const line of listing.split('\n')) {
      if (line === '' || line.startsWith('#') || !isRestorableXattr(line)) continue;
      await runTool(
        'setfattr',
        ['-h', '-x', line, '--', path],
        Buffer.alloc(0),
        'clear extended attributes',
        signal,
      );
    }
  }
}

/**
 * Removes the restorable xattrs of each absolute path: umoci clears a
 * lower directory's attributes before giving it an upper entry's.
 */
async function clearRestorableXattrs(
  paths: readonly string[],
  signal?: AbortSignal,
): Promise<void> {
  if (paths.length === 0) return;
  const nr = XATTR_SYSCALLS[process.arch];
  if (nr !== undefined) {
    const input = Buffer.from(paths.map((p) => `${p}\0`).join(''));
    const args = ['-e', PERL_CLEAR_XATTRS, String(nr.llistxattr), String(nr.lremovexattr)];
    try {
      await runTool('perl', args, input, 'clear extended attributes', signal);
      return;
    } catch (err) {
      if (!(err instanceof EnvironmentError && err.code === 'TOOL_MISSING')) throw err;
    }
  }
  await clearWithTools(paths, signal);
}

/** Extended attributes per path; names are latin1 strings holding the archive's raw bytes. */
export class XattrPlan {
  private readonly byPath = new Map<string, Map<string, Buffer>>();
  /** Root-relative paths whose restorable attributes go before the plan's are set. */
  private readonly cleared = new Set<string>();

  /** An existing inode whose attributes the plan replaces rather than adds to (layer mode). */
  clear(path: string): void {
    this.cleared.add(path);
  }

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
    this.cleared.delete(path);
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
    const cleared = [...this.cleared].map((path) => absolutePath(root, path));
    await clearRestorableXattrs(cleared, signal);
    if (this.byPath.size === 0) return;
    const input = Buffer.from(this.dump(root));
    await runTool('setfattr', ['-h', '--restore=-'], input, 'restore extended attributes', signal);
  }
}
