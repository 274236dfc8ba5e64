/**
 * The loop backend: each object is a sparse file under <state-dir>/pool/,
 * attached as a real loop device when in use. Snapshots, and the volumes of
 * layers above a base, are reflink copies where the filesystem supports them
 * (an in-process FICLONE on xfs and btrfs; `cp --sparse=always` otherwise).
 * Meant for development, CI and hosts without a thin pool.
 */
import {
  constants,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  closeSync,
  readdirSync,
  rmSync,
  rmdirSync,
  statSync,
  statfsSync,
  ftruncateSync,
  truncateSync,
} from 'node:fs';
import { copyFile, open as openFile, rename } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { EnvironmentError, InternalError, UsageError, errorMessage } from '../../errors.js';
import { run } from '../../sys/exec.js';
import { sharesExtents, spaceUsage, type SpaceUsage } from '../../sys/extents.js';
import { attachLoop, detachLoop, listLoops, loopsFor } from '../../sys/loop-devices.js';
import { fsyncDirectory } from '../../sys/fsync-dir.js';
import { growExt4 } from '../../sys/grow-ext4.js';
import { makeExt4, unpackMountOptions } from '../../sys/mkfs.js';
import { isMounted, listMounts, mountExt4, syncFilesystem, unmount } from '../../sys/mounts.js';
import type {
  BackendAction,
  BackendInventory,
  CloneSpec,
  ObjectSpec,
  PoolStatus,
  ReadinessCheck,
  SnapshotSpec,
  StorageBackend,
} from '../backend.js';
import { parseObjectName } from '../names.js';
import { deviceNodeCheck, rootCheck, toolChecks } from '../readiness.js';

const imageSuffix = '.img';
const partialSuffix = '.img.partial';

export interface LoopBackendOptions {
  stateDir: string;
  /** Free space to keep on the host filesystem, in bytes. */
  reserveBytes: number;
}

export class LoopBackend implements StorageBackend {
  readonly name = 'loop' as const;
  readonly usesThinIds = false;
  readonly poolDir: string;
  readonly mountDir: string;

  constructor(private readonly opts: LoopBackendOptions) {
    this.poolDir = join(opts.stateDir, 'pool');
    this.mountDir = join(opts.stateDir, 'mnt');
  }

  fileOf(o: Pick<ObjectSpec, 'name'>): string {
    return join(this.poolDir, o.name + imageSuffix);
  }

  private partialOf(o: Pick<ObjectSpec, 'name'>): string {
    return join(this.poolDir, o.name + partialSuffix);
  }

  mountpointOf(o: Pick<ObjectSpec, 'name'>): string {
    return join(this.mountDir, o.name);
  }

  prepare(): Promise<BackendAction[]> {
    return Promise.resolve([]);
  }

  async checkReadiness(): Promise<ReadinessCheck[]> {
    return [
      rootCheck('loop devices and mounts need it'),
      deviceNodeCheck('loop devices', '/dev/loop-control', 'modprobe loop'),
      ...(await toolChecks([
        ['losetup', 'mount'],
        ['mkfs.ext4', 'e2fsprogs'],
        ['e2fsck', 'e2fsprogs'],
        ['resize2fs', 'e2fsprogs'],
        ['mount', 'mount'],
        ['umount', 'mount'],
        ['cp', 'coreutils'],
        ['sync', 'coreutils'],
      ])),
    ];
  }

  createPool(): Promise<PoolStatus> {
    this.ensurePoolDirs();
    return this.poolStatus();
  }

  /**
   * The pool's directories, made on first use. Not createPool(): its status
   * reads every pool file's extents (filefrag), which each new volume or
   * clone would pay for again.
   */
  private ensurePoolDirs(): void {
    mkdirSync(this.poolDir, { recursive: true, mode: 0o700 });
    mkdirSync(this.mountDir, { recursive: true, mode: 0o700 });
  }

  async destroyPool(): Promise<void> {
    const inv = await this.inventory();
    if (inv.objects.length > 0 || inv.attached.length > 0 || inv.mounted.length > 0) {
      // A refusal, not a host fault: the operator asked for less than it takes.
      throw new UsageError(
        'IN_USE',
        `pool ${this.poolDir} still holds ${inv.objects.length} object(s)`,
        'remove the images first, or use `pool destroy --force`',
      );
    }
    for (const s of inv.strays) rmSync(s.path, { force: true });
    if (existsSync(this.poolDir)) rmdirSync(this.poolDir);
    if (existsSync(this.mountDir)) rmdirSync(this.mountDir);
  }

  async poolStatus(): Promise<PoolStatus> {
    const exists = existsSync(this.poolDir);
    // A fresh host has no state dir yet: measure the filesystem it will be made on.
    const fs = statfsSync(exists ? this.poolDir : nearestExisting(this.opts.stateDir));
    const files = exists ? readdirSync(this.poolDir).map((f) => join(this.poolDir, f)) : [];
    const { usage, counting } = await this.spaceUsage(files, sharesExtents(fs.type));
    const total = fs.blocks * fs.bsize;
    const free = Math.max(0, fs.bavail * fs.bsize - this.opts.reserveBytes);
    return {
      backend: this.name,
      location: this.poolDir,
      exists,
      dataTotalBytes: total,
      dataUsedBytes: usage.usedBytes,
      dataReferencedBytes: usage.referencedBytes,
      dataSharedBytes: usage.sharedBytes,
      metadataTotalBytes: null,
      metadataUsedBytes: null,
      freeBytes: free,
      healthy: exists ? true : null,
      detail: exists
        ? `sparse files on the filesystem of ${this.poolDir}; ${counting}`
        : 'pool directory does not exist yet (created on first use)',
    };
  }

  /**
   * The pool files' usage. Reflinked volumes share extents: FIEMAP counts
   * each shared one once. Should filefrag fail, status still answers, with
   * the per-file sum and the reason in its detail.
   */
  private async spaceUsage(
    files: string[],
    reflinks: boolean,
  ): Promise<{ usage: SpaceUsage; counting: string }> {
    if (!reflinks)
      return { usage: await spaceUsage(files, false), counting: 'no reflinks on this filesystem' };
    try {
      return {
        usage: await spaceUsage(files, true),
        counting: 'extents shared between reflinked volumes counted once',
      };
    } catch (err) {
      return {
        usage: await spaceUsage(files, false),
        counting: `shared extents counted once per volume (FIEMAP unreadable: ${errorMessage(err)})`,
      };
    }
  }

  async ensureSpace(bytes: number): Promise<void> {
    const status = await this.poolStatus();
    if (status.freeBytes < bytes) {
      throw new EnvironmentError(
        'LOW_SPACE',
        `pool ${this.poolDir} has ${status.freeBytes} bytes free (after the reserve), needs ${bytes}`,
        'free space on that filesystem, or lower THINRELAY_RESERVE_BYTES',
      );
    }
  }

  createVolume(volume: ObjectSpec): Promise<void> {
    // In an executor: a failure (the file exists) rejects, never throws at the call.
    return new Promise((resolve) => {
      this.ensurePoolDirs();
      const fd = openSync(
        this.fileOf(volume),
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL,
        0o600,
      );
      try {
        ftruncateSync(fd, volume.sizeBytes);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      resolve();
    });
  }

  async mountForUnpack(volume: ObjectSpec): Promise<{ mountpoint: string }> {
    // A retried unpack starts from a fresh filesystem: release any earlier attempt.
    await this.unmountAndDetach(volume);
    await makeExt4(this.fileOf(volume), { label: volume.name });
    return this.mountExisting(volume);
  }

  async createVolumeFrom(volume: CloneSpec): Promise<void> {
    this.ensurePoolDirs();
    // Grown on the partial copy, before its rename: a clone that exists is a grown one.
    const grow = volume.sizeBytes > volume.origin.sizeBytes;
    await this.copyComplete(this.fileOf(volume.origin), volume, grow ? growExt4 : undefined);
  }

  async mountForApply(volume: ObjectSpec): Promise<{ mountpoint: string }> {
    await this.unmountAndDetach(volume);
    return this.mountExisting(volume);
  }

  private async mountExisting(volume: ObjectSpec): Promise<{ mountpoint: string }> {
    const mountpoint = this.mountpointOf(volume);
    mkdirSync(mountpoint, { recursive: true, mode: 0o700 });
    const device = await attachLoop(this.fileOf(volume));
    try {
      await mountExt4(device, mountpoint, unpackMountOptions);
    } catch (err) {
      await detachLoop(device);
      throw err;
    }
    return { mountpoint };
  }

  async flush(volume: ObjectSpec): Promise<void> {
    await syncFilesystem(this.mountpointOf(volume));
  }

  async seal(volume: ObjectSpec): Promise<void> {
    await this.unmountAndDetach(volume);
    const fd = openSync(this.fileOf(volume), constants.O_RDONLY);
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  async createSnapshot(snapshot: SnapshotSpec): Promise<void> {
    await this.copyComplete(this.fileOf(snapshot.origin), snapshot);
  }

  /**
   * Copy `from` to the object's file: a partial name first, the final name
   * once complete. With `grow`, a copy smaller than `to.sizeBytes` is
   * extended (sparse) to it and `grow` makes its filesystem use the room;
   * never shrunk.
   */
  private async copyComplete(
    from: string,
    to: ObjectSpec,
    grow?: (file: string) => Promise<void>,
  ): Promise<void> {
    const partial = this.partialOf(to);
    rmSync(partial, { force: true });
    if (!(await this.reflink(from, partial))) {
      this.ensureRoomToCopy(from);
      await run('cp', ['--reflink=auto', '--sparse=always', '--', from, partial]);
    }
    if (grow !== undefined && statSync(partial).size < to.sizeBytes) {
      truncateSync(partial, to.sizeBytes);
      await grow(partial);
    }
    // On the thread pool: concurrent clones (a burst of Prepares) flush side by side
    // instead of one after another on the event loop.
    const file = await openFile(partial, constants.O_RDONLY);
    try {
      await file.sync();
    } finally {
      await file.close();
    }
    // Off the event loop too: under a burst the journal can make a rename wait.
    await rename(partial, this.fileOf(to));
    // The store records the copy as made once this returns: its name must outlive a power cut.
    await this.syncPoolDir();
  }

  /** The pool directory's fsync, after a rename into it; a method so a test sees it called. */
  protected syncPoolDir(): Promise<void> {
    return fsyncDirectory(this.poolDir);
  }

  /**
   * A whole-file clone (FICLONE) in the thread pool, where the pool's
   * filesystem shares extents: what `cp --reflink` does, without a process
   * per copy. False where it cannot (ext4, or a clone the kernel refuses):
   * the caller copies with cp.
   */
  private async reflink(from: string, to: string): Promise<boolean> {
    if (!sharesExtents(statfsSync(this.poolDir).type)) return false;
    try {
      await copyFile(from, to, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE_FORCE);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EOPNOTSUPP' && code !== 'ENOTSUP' && code !== 'EXDEV' && code !== 'EINVAL')
        throw err;
      rmSync(to, { force: true });
      return false;
    }
  }

  /** A sparse copy (no reflinks here) takes what its source holds: never out of the reserve. */
  private ensureRoomToCopy(from: string): void {
    const fs = statfsSync(this.poolDir);
    if (sharesExtents(fs.type)) return;
    const need = statSync(from).blocks * 512;
    const free = Math.max(0, fs.bavail * fs.bsize - this.opts.reserveBytes);
    if (free < need)
      throw new EnvironmentError(
        'LOW_SPACE',
        `pool ${this.poolDir} has ${free} bytes free (after the reserve), a copy of ${basename(from)} needs ${need}`,
        'free space on that filesystem, or lower THINRELAY_RESERVE_BYTES',
      );
  }

  async activate(snapshot: SnapshotSpec): Promise<string> {
    const existing = await loopsFor(this.fileOf(snapshot));
    if (existing.length > 0) {
      for (const extra of existing.slice(1)) await detachLoop(extra);
      return existing[0]!;
    }
    return attachLoop(this.fileOf(snapshot));
  }

  async deactivate(snapshot: ObjectSpec): Promise<void> {
    for (const dev of await loopsFor(this.fileOf(snapshot))) await detachLoop(dev);
  }

  async remove(object: ObjectSpec): Promise<void> {
    await this.unmountAndDetach(object);
    rmSync(this.partialOf(object), { force: true });
    rmSync(this.fileOf(object), { force: true });
  }

  removeStray(path: string): Promise<void> {
    if (!path.startsWith(this.poolDir + '/')) throw new InternalError(`${path} is not in the pool`);
    rmSync(path, { force: true });
    return Promise.resolve();
  }

  async inventory(): Promise<BackendInventory> {
    const inv: BackendInventory = { objects: [], attached: [], mounted: [], strays: [] };
    if (existsSync(this.poolDir)) {
      for (const f of readdirSync(this.poolDir)) {
        const path = join(this.poolDir, f);
        const name = f.endsWith(imageSuffix) ? f.slice(0, -imageSuffix.length) : null;
        if (name !== null && parseObjectName(name) !== null)
          inv.objects.push({ name, thinId: null });
        else
          inv.strays.push({
            description: f.endsWith(partialSuffix)
              ? 'partial snapshot copy'
              : 'unknown file in pool',
            path,
          });
      }
    }
    const prefix = this.poolDir + '/';
    for (const l of await listLoops()) {
      if (!l.backingFile.startsWith(prefix)) continue;
      const f = l.backingFile.slice(prefix.length);
      const name = f.endsWith(imageSuffix) ? f.slice(0, -imageSuffix.length) : f;
      inv.attached.push({ name, devicePath: l.device });
    }
    const mprefix = this.mountDir + '/';
    for (const m of listMounts()) {
      if (m.mountpoint.startsWith(mprefix))
        inv.mounted.push({ name: m.mountpoint.slice(mprefix.length), mountpoint: m.mountpoint });
    }
    return inv;
  }

  private async unmountAndDetach(object: Pick<ObjectSpec, 'name'>): Promise<void> {
    const mountpoint = this.mountpointOf(object);
    if (isMounted(mountpoint)) await unmount(mountpoint);
    if (existsSync(mountpoint)) rmdirSync(mountpoint);
    for (const dev of await loopsFor(this.fileOf(object))) await detachLoop(dev);
  }
}

/** The path itself, or its closest existing ancestor. */
function nearestExisting(path: string): string {
  let p = resolve(path);
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  return p;
}
