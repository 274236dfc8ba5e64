/**
 * The extractor: applies each member the tar reader meets to the
 * filesystem, after checking it against the path model. Files are written
 * synchronously as their data streams by; what must wait for the last member
 * (directory metadata, xattrs, device nodes, exact times) is queued and
 * applied by finish().
 */
import fs from 'node:fs';
import { EnvironmentError, ImageError } from '../errors.js';
import { EndScript } from './end-script.js';
import {
  closeFile,
  createFile,
  finishFile,
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
      throw new Error(
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
  private readonly model = new PathModel();
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
  ) {
    seedModel(root, this.model);
    this.creation = creationDefaults(root);
  }

  member(member: TarMember): void {
    this.stats.entries++;
    const what = describe(member);
    const path = normaliseArchivePath(member.name, this.limits, what);
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
    const existing = this.model.get(path);
    if (existing === undefined) return true;
    if (existing === 'dir') {
      if (kind === 'dir') return false;
      throw new ImageError(
        'ARCHIVE_CONFLICT',
        `${what()}: would replace a directory with a ${kindName(kind)}`,
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
    const xattrs = restorableXattrs(member.xattrs);
    if (xattrs !== undefined) this.xattrs.merge(path, xattrs);
  }

  private regularFile(member: TarMember, path: string, what: () => string): void {
    this.prepare(member, path, 'file', what);
    const abs = this.abs(path);
    const mode = this.creation.umask === undefined ? 0o600 : member.mode & 0o777;
    const fd = createFile(abs, mode, member.name);
    this.model.set(path, 'file');
    this.file = { fd, abs, member };
    this.stats.files++;
    const xattrs = restorableXattrs(member.xattrs);
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
    const kind = this.model.get(target);
    if (kind !== 'file' && kind !== 'special') {
      const problem =
        kind === undefined ? 'does not exist in the archive before it' : `is a ${kindName(kind)}`;
      throw new ImageError('ARCHIVE_UNSAFE_LINK', `${linkWhat()} ${problem}`);
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
      throw new Error(`internal: ${member.type} is not a special file`);
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
