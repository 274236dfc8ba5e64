/**
 * The extractor: applies each member the tar reader meets to the
 * filesystem, after checking it against the path model. Files are written
 * synchronously as their data streams by; what must wait for the last member
 * (directory metadata, xattrs, device nodes, exact times) is queued and
 * applied by finish().
 *
 * In layer mode (an OCI layer, see apply-layer.ts) the same writer
 * follows the image-spec's rules instead of GNU tar's: whiteouts remove what
 * the lower layers hold, a non-directory replaces a directory with its
 * subtree, an upper directory's metadata replaces the lower one's, and lower
 * directories the layer only wrote into keep their time.
 */
import fs from 'node:fs';
import { EnvironmentError, ImageError, type ImageFailureCode, InternalError } from '../errors.js';
import { EndScript } from './end-script.js';
import {
  closeFile,
  createFile,
  finishFile,
  fsFailure,
  makeDirectory,
  makeHardlink,
  makeSymlink,
  removeFile,
  setPathMetadata,
  writeAll,
} from './entry-writer.js';
import {
  absolutePath,
  DirectoryMetadata,
  restorableXattrs,
  XattrPlan,
  type EntryMetadata,
} from './metadata.js';
import { DiskLowerTree } from './lower-tree.js';
import {
  checkSymlinkTarget,
  kindName,
  normaliseArchivePath,
  PathModel,
  type NodeKind,
  type PathLimits,
} from './path-policy.js';
import { printable } from './printable.js';
import { SpecialFileBatch, type SpecialFile } from './special-files.js';
import type { TarMember, TarSink } from './tar-reader.js';
import { ExactTimes, nodeSeconds } from './times.js';
import { isWhiteoutName, parseWhiteout, unsafeWhiteout } from './whiteout.js';

/** What unpackArchive reports, less the compression. */
export interface MemberCounts {
  entries: number;
  files: number;
  directories: number;
  symlinks: number;
  hardlinks: number;
  devices: number;
  fifos: number;
  contentBytes: number;
}

/** What only layer mode counts. */
export interface WhiteoutCounts {
  /** Whiteout members (never written). */
  whiteouts: number;
  /** Lower paths they removed (a directory with its subtree counts once). */
  removed: number;
}

/** OCI layer semantics; `lower`: the filesystem already holds the layers below. */
export interface LayerMode {
  lower: boolean;
}

interface PendingSpecial extends SpecialFile {
  member: TarMember;
}

interface OpenFile {
  fd: number;
  abs: string;
  member: TarMember;
}

function describe(member: TarMember): () => string {
  return () => `member ${printable(member.name)}`;
}

/**
 * The unpack root must hold nothing the model does not know about: a fresh
 * filesystem has only an empty lost+found, which the model records as a
 * directory (an archive may list it too).
 */
function seedModel(root: string, model: PathModel): void {
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    const emptyLostFound =
      entry.name === 'lost+found' &&
      entry.isDirectory() &&
      fs.readdirSync(`${root}/lost+found`).length === 0;
    if (!emptyLostFound) {
      throw new ImageError(
        'STORAGE_FAILED',
        `unpackArchive: ${root} must be empty apart from lost+found, but has ${entry.name}`,
      );
    }
    model.set('lost+found', 'dir');
  }
}

/**
 * What a new file gets without being asked: our own uid and gid (no
 * directory is setgid while we write, unless the root itself is) and its
 * open() mode less the umask. Files whose member already matches skip
 * fchown and fchmod, two of the six system calls a file costs.
 */
interface CreationDefaults {
  uid: number;
  gid: number;
  /** undefined: unknown, so every file gets fchmod. */
  umask: number | undefined;
}

/** The umask without process.umask()'s set-and-restore: Linux shows it in /proc. */
function readUmask(): number | undefined {
  let status: string;
  try {
    status = fs.readFileSync('/proc/self/status', 'latin1');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const m = /^Umask:\s*([0-7]+)$/m.exec(status);
  return m === null ? undefined : parseInt(m[1]!, 8);
}

const S_ISGID = 0o2000;

function creationDefaults(root: string): CreationDefaults {
  const setgidRoot = (fs.statSync(root).mode & S_ISGID) !== 0;
  return {
    uid: process.geteuid?.() ?? -1,
    gid: setgidRoot ? -1 : (process.getegid?.() ?? -1),
    umask: readUmask(),
  };
}

/**
 * Hard-linked paths share an inode, but xattrs and deferred times are kept
 * by path: when one name of the inode is replaced, they move to another.
 */
class LinkGroups {
  private readonly groups = new Map<string, Set<string>>();

  add(target: string, path: string): void {
    const group = this.groups.get(target) ?? new Set([target]);
    group.add(path);
    this.groups.set(target, group);
    this.groups.set(path, group);
  }

  /** Drops `path` from its group; returns another name of the same inode, if any. */
  detach(path: string): string | undefined {
    const group = this.groups.get(path);
    if (group === undefined) return undefined;
    group.delete(path);
    this.groups.delete(path);
    return group.values().next().value;
  }
}

export class Extractor implements TarSink {
  readonly stats: MemberCounts = {
    entries: 0,
    files: 0,
    directories: 0,
    symlinks: 0,
    hardlinks: 0,
    devices: 0,
    fifos: 0,
    contentBytes: 0,
  };
  readonly whiteoutStats: WhiteoutCounts = { whiteouts: 0, removed: 0 };
  private readonly model: PathModel;
  /** Layer mode over lower layers: what they held, as far as the layer touched it. */
  private readonly lowerTree: DiskLowerTree | undefined;
  /**
   * Layer mode over lower layers: every path this layer wrote, with its
   * ancestors. Whiteouts remove only what is not in here, wherever they
   * stand in the layer (umoci's upperPaths).
   */
  private readonly upper: Set<string> | undefined;
  private readonly dirs = new DirectoryMetadata();
  private readonly xattrs = new XattrPlan();
  private readonly exactTimes = new ExactTimes();
  private readonly links = new LinkGroups();
  private readonly specials = new SpecialFileBatch<PendingSpecial>((f) => this.specialCreated(f));
  /** GNU tar leaves atime alone (the time of extraction); Node must pass one, so: now. */
  private readonly atime = Date.now() / 1000;
  private file: OpenFile | undefined;
  private readonly creation: CreationDefaults;

  constructor(
    private readonly root: string,
    private readonly limits: PathLimits,
    private readonly layer?: LayerMode,
  ) {
    if (layer?.lower === true) {
      this.lowerTree = new DiskLowerTree(root);
      this.upper = new Set();
    }
    this.model = new PathModel({
      layered: layer !== undefined,
      lower: this.lowerTree,
      unsafeLinkCode: layer === undefined ? undefined : 'LAYER_UNSAFE_LINK',
    });
    if (this.lowerTree === undefined) seedModel(root, this.model);
    this.creation = creationDefaults(root);
  }

  member(member: TarMember): void {
    this.stats.entries++;
    const what = describe(member);
    if (this.layer !== undefined && isWhiteoutName(member.name)) {
      return this.whiteout(member, what);
    }
    const path = normaliseArchivePath(member.name, this.limits, what);
    this.write(member, path, what);
    if (this.upper !== undefined) this.markUpper(path);
  }

  private write(member: TarMember, path: string, what: () => string): void {
    switch (member.type) {
      case 'directory':
        return this.directory(member, path, what);
      case 'file':
        return this.regularFile(member, path, what);
      case 'symlink':
        return this.symlink(member, path, what);
      case 'hardlink':
        return this.hardlink(member, path, what);
      default:
        return this.special(member, path, what);
    }
  }

  data(chunk: Buffer): void {
    if (this.file === undefined) return; // data of a link or directory member: GNU tar skips it too
    writeAll(this.file.fd, chunk, this.file.member.name);
    this.stats.contentBytes += chunk.length;
  }

  memberEnd(): void {
    if (this.file === undefined) return;
    const { fd, abs, member } = this.file;
    this.file = undefined;
    const seconds = nodeSeconds(member.mtime);
    const { uid, gid, umask } = this.creation;
    const chown = member.uid !== uid || member.gid !== gid;
    const chmod = umask === undefined || (member.mode & (0o7000 | umask)) !== 0;
    finishFile(fd, member, chown, chmod, this.atime, seconds, member.name);
    if (seconds === undefined) this.exactTimes.set(abs, member.mtime);
  }

  /** Everything that waits for the last member, in the order that keeps times intact. */
  async finish(signal?: AbortSignal): Promise<void> {
    if (this.lowerTree !== undefined) this.restoreLowerDirectoryTimes();
    const script = this.endScript();
    if (script !== undefined) {
      // Only regular files and directories carry xattrs: they exist already.
      await this.xattrs.apply(this.root, signal);
      try {
        await script.run(signal);
        return;
      } catch (err) {
        if (!(err instanceof EnvironmentError && err.code === 'TOOL_MISSING')) throw err;
      }
      // No perl: nothing was applied; the other tools do it, xattrs aside.
      this.specials.flush();
      this.dirs.apply(this.root, this.atime, this.exactTimes);
      await this.exactTimes.apply(signal);
      return;
    }
    this.specials.flush();
    await this.xattrs.apply(this.root, signal);
    this.dirs.apply(this.root, this.atime, this.exactTimes);
    await this.exactTimes.apply(signal);
  }

  /**
   * What finish() leaves to one perl run, in order: pending device nodes and
   * fifos with their owner, mode and time; directories' owner, mode and time,
   * deepest first; then every time Node could not set exactly. Undefined when
   * the other tools and Node must do it instead: unknown system call numbers,
   * or a device number or id the kernel would truncate (mknod(1) and Node
   * refuse those, with their own messages).
   */
  private endScript(): EndScript | undefined {
    const script = EndScript.create();
    if (script === undefined) return undefined;
    const specials = this.specials.peek();
    for (const { abs, type, devmajor, devminor, member } of specials) {
      if (!script.mknod(abs, type, devmajor, devminor)) return undefined;
      if (!script.owner(abs, member.uid, member.gid, member.mode)) return undefined;
      script.time(abs, member.mtime);
    }
    for (const { path, meta } of this.dirs.ordered()) {
      const abs = this.abs(path);
      if (!script.owner(abs, meta.uid, meta.gid, meta.mode)) return undefined;
      script.time(abs, meta.mtime);
    }
    for (const [abs, time] of this.exactTimes.entries()) {
      script.time(abs, time);
    }
    return script;
  }

  /** After a failure: no fd may be left open (the volume itself is thrown away). */
  abandon(): void {
    if (this.file === undefined) return;
    const { fd, member } = this.file;
    this.file = undefined;
    closeFile(fd, member.name);
  }

  private abs(path: string): string {
    return absolutePath(this.root, path);
  }

  /**
   * Makes room for a `kind` at `path`: creates missing parent directories and
   * removes a non-directory already there (GNU tar replaces it too). Returns
   * false when a directory is already there and `kind` is a directory.
   */
  private prepare(member: TarMember, path: string, kind: NodeKind, what: () => string): boolean {
    for (const dir of this.model.missingAncestors(path, what)) {
      // Like GNU tar: mode 0777 less the umask, owned by us, time left as is.
      makeDirectory(this.abs(dir), 0o777, member.name);
      this.model.set(dir, 'dir');
    }
    const existing = this.model.lookup(path);
    if (existing === undefined) return true;
    if (existing === 'dir') {
      if (kind === 'dir') return false;
      if (this.layer !== undefined && path !== '') {
        this.removeTree(path, member.name);
        return true;
      }
      throw new ImageError(
        'ARCHIVE_CONFLICT',
        `${what()}: would replace ${path === '' ? 'the root directory' : 'a directory'} with a ${kindName(kind)}`,
      );
    }
    this.replace(member, path);
    return true;
  }

  private replace(member: TarMember, path: string): void {
    if (this.specials.isPending(path)) this.specials.flush();
    const abs = this.abs(path);
    removeFile(abs, member.name);
    this.model.remove(path);
    const survivor = this.links.detach(path);
    this.exactTimes.move(abs, survivor === undefined ? undefined : this.abs(survivor));
    this.xattrs.move(path, survivor);
  }

  private directory(member: TarMember, path: string, what: () => string): void {
    if (this.prepare(member, path, 'dir', what)) {
      // Owner-only while children are written; the real mode is set at the end.
      makeDirectory(this.abs(path), 0o700, member.name);
      this.model.set(path, 'dir');
    }
    this.stats.directories++;
    this.dirs.set(path, metadataOf(member));
    const xattrs = restorableXattrs(member.xattrs, member.name);
    if (this.layer !== undefined) {
      // umoci: an upper directory's xattrs replace the lower (or earlier) ones.
      this.xattrs.move(path, undefined);
      if (this.model.isLowerDirectory(path)) this.xattrs.clear(path);
      if (xattrs !== undefined) this.xattrs.set(path, xattrs);
    } else if (xattrs !== undefined) this.xattrs.merge(path, xattrs);
  }

  private regularFile(member: TarMember, path: string, what: () => string): void {
    this.prepare(member, path, 'file', what);
    const abs = this.abs(path);
    const mode = this.creation.umask === undefined ? 0o600 : member.mode & 0o777;
    const fd = createFile(abs, mode, member.name);
    this.model.set(path, 'file');
    this.file = { fd, abs, member };
    this.stats.files++;
    const xattrs = restorableXattrs(member.xattrs, member.name);
    if (xattrs !== undefined) this.xattrs.set(path, xattrs);
  }

  /** The target is stored verbatim and never resolved; user.* xattrs cannot exist on a symlink. */
  private symlink(member: TarMember, path: string, what: () => string): void {
    checkSymlinkTarget(member.linkname, this.limits, what);
    this.prepare(member, path, 'symlink', what);
    const abs = this.abs(path);
    makeSymlink(member.linkname, abs, member.name);
    this.model.set(path, 'symlink');
    this.stats.symlinks++;
    this.setMetadata(abs, member, false);
  }

  private hardlink(member: TarMember, path: string, what: () => string): void {
    const linkWhat = (): string => `${what()}: hard link target ${printable(member.linkname)}`;
    const target = normaliseArchivePath(
      member.linkname,
      this.limits,
      linkWhat,
      'ARCHIVE_LINK_ESCAPE',
    );
    let kind: NodeKind | undefined;
    let code: ImageFailureCode = 'ARCHIVE_UNSAFE_LINK';
    if (this.layer === undefined) kind = this.model.get(target);
    else {
      // A lower layer's file will do, found without passing through a link.
      code = 'LAYER_UNSAFE_LINK';
      const parents = this.model.parentState(target, linkWhat, code);
      kind = parents === 'dir' ? this.model.lookup(target) : undefined;
    }
    if (kind !== 'file' && kind !== 'special') {
      const problem =
        kind !== undefined
          ? `is a ${kindName(kind)}`
          : this.layer === undefined
            ? 'does not exist in the archive before it'
            : 'does not exist in this layer before it or below it';
      throw new ImageError(code, `${linkWhat()} ${problem}`);
    }
    this.stats.hardlinks++;
    if (target === path) return; // a link to itself: GNU tar accepts it and leaves the file as is
    if (this.specials.isPending(target)) this.specials.flush();
    this.prepare(member, path, kind, what);
    makeHardlink(this.abs(target), this.abs(path), member.name);
    this.model.set(path, kind);
    this.links.add(target, path);
  }

  private special(member: TarMember, path: string, what: () => string): void {
    if (member.type !== 'char-device' && member.type !== 'block-device' && member.type !== 'fifo') {
      throw new InternalError(`${member.type} is not a special file`);
    }
    this.prepare(member, path, 'special', what);
    this.specials.add({
      abs: this.abs(path),
      path,
      type: member.type,
      devmajor: member.devmajor,
      devminor: member.devminor,
      member,
    });
    this.model.set(path, 'special');
    if (member.type === 'fifo') this.stats.fifos++;
    else this.stats.devices++;
  }

  /**
   * A whiteout (layer mode): checked like a member, never written. Over
   * lower layers it removes what they hold at its target, keeping whatever
   * this layer wrote there (an opaque whiteout keeps the directory itself).
   * Beneath a file or a missing directory there is nothing to remove.
   */
  private whiteout(member: TarMember, what: () => string): void {
    const w = parseWhiteout(member.name, this.limits, what);
    this.whiteoutStats.whiteouts++;
    const parents = this.model.parentState(w.target, what, 'LAYER_UNSAFE_WHITEOUT');
    if (parents !== 'dir') return;
    const kind = this.model.lookup(w.target);
    if (w.opaque && kind === 'symlink') {
      throw unsafeWhiteout(what(), 'marks a symbolic link opaque; links are never followed');
    }
    if (this.upper === undefined || kind === undefined) return;
    if (w.opaque && kind !== 'dir') return;
    this.removeLower(w.target, w.opaque, member.name);
  }

  /**
   * Removes `path` unless this layer wrote it or something beneath it; then
   * looks inside instead. lost+found at the root belongs to the filesystem,
   * not to the image: an opaque root keeps it.
   */
  private removeLower(path: string, keepSelf: boolean, name: string): void {
    const upper = this.upper!;
    if (!keepSelf && !upper.has(path)) {
      this.removeTree(path, name);
      this.whiteoutStats.removed++;
      return;
    }
    if (this.model.get(path) !== 'dir') return;
    let entries: string[];
    try {
      entries = fs.readdirSync(this.abs(path));
    } catch (err) {
      throw fsFailure(err, 'read directory', name);
    }
    for (const entry of entries) {
      if (path === '' && entry === 'lost+found') continue;
      this.removeLower(path === '' ? entry : `${path}/${entry}`, false, name);
    }
  }

  /** Layer mode: removes `path` (a directory with its subtree; a link itself, never its target). */
  private removeTree(path: string, name: string): void {
    // A pending device node or fifo might lie beneath: make it first.
    if (this.specials.peek().length > 0) this.specials.flush();
    try {
      fs.rmSync(this.abs(path), { recursive: true });
    } catch (err) {
      throw fsFailure(err, 'remove', name);
    }
    for (const gone of this.model.removeTree(path)) {
      const survivor = this.links.detach(gone);
      this.exactTimes.move(this.abs(gone), survivor === undefined ? undefined : this.abs(survivor));
      this.xattrs.move(gone, survivor);
      this.dirs.delete(gone);
      this.lowerTree?.directoryTimes.delete(gone);
    }
  }

  private markUpper(path: string): void {
    const upper = this.upper!;
    for (let p = path; p !== '' && !upper.has(p);) {
      upper.add(p);
      const slash = p.lastIndexOf('/');
      p = slash < 0 ? '' : p.slice(0, slash);
    }
  }

  /**
   * Lower directories keep the time the lower layers gave them, however
   * many entries this layer added or removed in them (umoci restores each
   * parent after every entry); those the layer lists take the layer's.
   */
  private restoreLowerDirectoryTimes(): void {
    for (const [path, time] of this.lowerTree!.directoryTimes) {
      if (this.dirs.has(path) || !this.model.isLowerDirectory(path)) continue;
      this.exactTimes.set(this.abs(path), time);
    }
  }

  private specialCreated(file: PendingSpecial): void {
    this.setMetadata(file.abs, file.member, true);
  }

  private setMetadata(abs: string, member: TarMember, setMode: boolean): void {
    const seconds = nodeSeconds(member.mtime);
    setPathMetadata(abs, member, setMode, this.atime, seconds, member.name);
    if (seconds === undefined) this.exactTimes.set(abs, member.mtime);
  }
}

function metadataOf(member: TarMember): EntryMetadata {
  return { uid: member.uid, gid: member.gid, mode: member.mode, mtime: member.mtime };
}
