/**
 * The devmapper backend: volumes and snapshots are thin devices of one thin
 * pool. A volume is a thin device (mkfs'd, unpacked, then deactivated) or,
 * for a layer above a base, a create_snap of the layer below it (mounted
 * without mkfs, the layer applied on top, deactivated); a snapshot is a
 * create_snap of a volume, activated as /dev/mapper/<name>.
 * Thin ids come from the store; every create and delete is a pool
 * transaction (pool-transactions.ts); the pool itself is thin-pool.ts.
 * Device names are derived from object ids plus a per-state-dir prefix,
 * never from anything an uploader controls.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, realpathSync, rmdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { EnvironmentError, InternalError } from '../../errors.js';
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
import {
  checkDmName,
  dmCreate,
  dmDropNode,
  dmEnsureNode,
  dmInfo,
  dmNames,
  dmRemove,
  dmThinTable,
  thinTable,
} from './device-mapper.js';
import type { PoolTransactions } from './pool-transactions.js';
import { ThinPool, type ThinPoolOptions } from './thin-pool.js';

/** The pool's settings (thin-pool.ts), with where its name and files come from. */
export interface DevmapperOptions extends Omit<ThinPoolOptions, 'name' | 'attached' | 'dmDir'> {
  stateDir: string;
  /** An existing pool to attach to by name; null = the pool `pool create` makes. */
  poolName: string | null;
}

/** The prefix of every dm name of one state dir, so agents on one host never collide. */
export function dmPrefixFor(stateDir: string): string {
  let dir = resolve(stateDir);
  if (existsSync(dir)) dir = realpathSync(dir);
  return `thinrelay-${createHash('sha256').update(dir).digest('hex').slice(0, 8)}-`;
}

export class DevmapperBackend implements StorageBackend {
  readonly name = 'devmapper' as const;
  readonly usesThinIds = true;
  readonly prefix: string;
  readonly poolName: string;
  readonly dmDir: string;
  readonly mountDir: string;
  readonly pool: ThinPool;

  constructor(private readonly opts: DevmapperOptions) {
    this.prefix = dmPrefixFor(opts.stateDir);
    this.poolName = checkDmName(opts.poolName ?? `${this.prefix}pool`);
    this.dmDir = join(opts.stateDir, 'dm');
    this.mountDir = join(opts.stateDir, 'mnt');
    this.pool = new ThinPool({
      ...opts,
      name: this.poolName,
      attached: opts.poolName !== null,
      dmDir: this.dmDir,
    });
  }

  deviceName(o: Pick<ObjectSpec, 'name'>): string {
    return checkDmName(this.prefix + o.name);
  }

  devicePath(o: Pick<ObjectSpec, 'name'>): string {
    return `/dev/mapper/${this.deviceName(o)}`;
  }

  mountpointOf(o: Pick<ObjectSpec, 'name'>): string {
    return join(this.mountDir, o.name);
  }

  private get tx(): PoolTransactions {
    return this.pool.tx;
  }

  // ---- the pool (thin-pool.ts) -------------------------------------------

  prepare(): Promise<BackendAction[]> {
    return this.pool.bringUp();
  }

  createPool(o: { sizeBytes?: number; devices?: string[] }): Promise<PoolStatus> {
    return this.pool.create(o);
  }

  destroyPool(): Promise<void> {
    return this.pool.destroy(async () => {
      const inv = await this.inventory();
      return Math.max(inv.objects.length, inv.attached.length, inv.mounted.length);
    });
  }

  poolStatus(): Promise<PoolStatus> {
    return this.pool.status();
  }

  waitForPoolEvent(opts: { signal: AbortSignal; timeoutMs: number }): Promise<boolean> {
    return this.pool.waitForEvent(opts);
  }

  ensureSpace(bytes: number): Promise<void> {
    return this.pool.ensureSpace(bytes);
  }

  checkReadiness(): Promise<ReadinessCheck[]> {
    return this.pool.checkReadiness();
  }

  /** Doctor's pool check: exists, healthy, above both free-space floors. */
  poolChecks(): Promise<ReadinessCheck[]> {
    return this.pool.checks();
  }

  // ---- thin devices -----------------------------------------------------

  private sectorsOf(o: Pick<ObjectSpec, 'sizeBytes'>): number {
    return Math.ceil(o.sizeBytes / 512);
  }

  private requireThinId(o: ObjectSpec): number {
    if (o.thinId === null) throw new InternalError(`${o.name} has no thin id`);
    return o.thinId;
  }

  /** Activate a thin device under our name; an existing device must map the same thin id. */
  private async activateThin(o: ObjectSpec): Promise<string> {
    const name = this.deviceName(o);
    const thinId = this.requireThinId(o);
    if ((await dmInfo(name)) !== null) {
      const current = await dmThinTable(name);
      const pool = await this.pool.device();
      if (
        current !== null &&
        current.thinId === thinId &&
        current.pool.major === pool.major &&
        current.pool.minor === pool.minor
      )
        return dmEnsureNode(name);
      this.opts.logger.warn('replacing a device that maps the wrong thin id', {
        device: name,
        table: current,
      });
      await dmRemove(name);
    }
    await dmCreate(
      name,
      thinTable({ sectors: this.sectorsOf(o), pool: await this.pool.device(), thinId }),
    );
    return dmEnsureNode(name);
  }

  private async deactivateThin(o: Pick<ObjectSpec, 'name'>): Promise<void> {
    const name = this.deviceName(o);
    if ((await dmInfo(name)) !== null) await dmRemove(name);
    await dmDropNode(name);
  }

  async createVolume(volume: ObjectSpec): Promise<void> {
    const thinId = this.requireThinId(volume);
    await this.tx.change({ op: 'create_thin', thinId, purpose: `volume ${volume.name}` });
  }

  async mountForUnpack(volume: ObjectSpec): Promise<{ mountpoint: string }> {
    const mountpoint = this.mountpointOf(volume);
    // A retried unpack starts from a fresh filesystem: release any earlier attempt.
    if (isMounted(mountpoint)) await unmount(mountpoint);
    const device = await this.activateThin(volume);
    await makeExt4(device, { label: volume.name.slice(0, 16) });
    mkdirSync(mountpoint, { recursive: true, mode: 0o700 });
    await mountExt4(device, mountpoint, unpackMountOptions);
    return { mountpoint };
  }

  async createVolumeFrom(volume: CloneSpec): Promise<void> {
    await this.snapOf(volume, `layer volume ${volume.name} from ${volume.origin.name}`);
    // Left attached for whoever mounts it next (mountForApply, or a containerd
    // client's Mounts). A thin device is as long as its table says: attached
    // at the clone's size, a larger clone's filesystem is grown to fill it.
    const device = await this.activateThin(volume);
    if (volume.sizeBytes > volume.origin.sizeBytes) await growExt4(device);
  }

  async mountForApply(volume: ObjectSpec): Promise<{ mountpoint: string }> {
    const mountpoint = this.mountpointOf(volume);
    if (isMounted(mountpoint)) await unmount(mountpoint);
    const device = await this.activateThin(volume);
    mkdirSync(mountpoint, { recursive: true, mode: 0o700 });
    await mountExt4(device, mountpoint, unpackMountOptions);
    return { mountpoint };
  }

  async flush(volume: ObjectSpec): Promise<void> {
    // syncfs ends in a flush to the thin device, which commits the pool's metadata.
    try {
      await syncFilesystem(this.mountpointOf(volume));
    } catch (err) {
      // error_if_no_space: a full pool fails the writes, and syncfs reports EIO.
      const s = await this.pool.rawStatus();
      if (s.mode === 'out_of_data_space')
        throw new EnvironmentError(
          'LOW_SPACE',
          `thin pool ${this.poolName} ran out of data space while ${volume.name} was written`,
          'thinrelay gc, extend the pool, or raise THINRELAY_POOL_MIN_FREE_DATA',
          { cause: err },
        );
      throw err;
    }
  }

  async seal(volume: ObjectSpec): Promise<void> {
    await this.unmountOf(volume);
    await this.deactivateThin(volume);
  }

  async createSnapshot(snapshot: SnapshotSpec): Promise<void> {
    await this.snapOf(snapshot, `snapshot ${snapshot.name} of ${snapshot.origin.name}`);
  }

  /** create_snap of `o.origin` as one pool transaction. */
  private async snapOf(o: SnapshotSpec | CloneSpec, purpose: string): Promise<void> {
    const thinId = this.requireThinId(o);
    const originId = this.requireThinId(o.origin);
    // An active origin is suspended around the message (the kernel's rule);
    // a sealed layer's is detached and needs nothing.
    const originDevice = this.deviceName(o.origin);
    await this.tx.change({ op: 'create_snap', thinId, originId, purpose, originDevice });
  }

  async activate(snapshot: SnapshotSpec): Promise<string> {
    return this.activateThin(snapshot);
  }

  /**
   * Attach a writable volume (a containerd snapshot's) as /dev/mapper/<name>
   * for its client to mount; sealing it detaches it again. Idempotent.
   */
  attachWritable(volume: ObjectSpec): Promise<string> {
    return this.activateThin(volume);
  }

  /** Data the thin device maps in the pool (see ThinPool.mappedBytes). */
  mappedBytes(o: ObjectSpec): Promise<number> {
    return this.pool.mappedBytes(this.requireThinId(o));
  }

  async deactivate(snapshot: ObjectSpec): Promise<void> {
    await this.unmountOf(snapshot);
    await this.deactivateThin(snapshot);
  }

  async remove(object: ObjectSpec): Promise<void> {
    await this.unmountOf(object);
    await this.deactivateThin(object);
    if (object.thinId !== null) await this.deleteThin(object.thinId, `remove ${object.name}`);
  }

  /** Delete a thin id (bounded retries while busy); false when the pool did not hold it. */
  async removeThin(thinId: number, reason: string): Promise<boolean> {
    return this.deleteThin(thinId, reason);
  }

  private async deleteThin(thinId: number, purpose: string): Promise<boolean> {
    return this.tx.change({ op: 'delete', thinId, purpose });
  }

  /** A stray is a device in our namespace that maps no object of ours: remove the device only. */
  async removeStray(deviceName: string): Promise<void> {
    if (!deviceName.startsWith(this.prefix))
      throw new InternalError(`${deviceName} is not in our namespace`);
    await dmRemove(checkDmName(deviceName));
    await dmDropNode(deviceName);
  }

  private async unmountOf(o: Pick<ObjectSpec, 'name'>): Promise<void> {
    const mountpoint = this.mountpointOf(o);
    if (isMounted(mountpoint)) await unmount(mountpoint);
    if (existsSync(mountpoint)) rmdirSync(mountpoint);
  }

  // ---- what the pool really holds ---------------------------------------

  listThinIds(): Promise<number[]> {
    return this.pool.listThinIds();
  }

  async inventory(): Promise<BackendInventory> {
    const inv: BackendInventory = { objects: [], attached: [], mounted: [], strays: [] };
    const pool = await this.pool.device();
    for (const thinId of await this.listThinIds()) inv.objects.push({ name: null, thinId });
    for (const device of dmNames()) {
      if (!device.startsWith(this.prefix)) continue;
      const t = await dmThinTable(device);
      if (t === null) continue;
      const name = device.slice(this.prefix.length);
      const samePool = t.pool.major === pool.major && t.pool.minor === pool.minor;
      if (parseObjectName(name) === null || !samePool) {
        inv.strays.push({
          description: samePool
            ? 'device in our namespace that maps no object'
            : 'device in our namespace that maps another pool',
          path: device,
          owned: true,
        });
        continue;
      }
      inv.attached.push({ name, devicePath: `/dev/mapper/${device}`, thinId: t.thinId });
    }
    const mprefix = this.mountDir + '/';
    for (const m of listMounts()) {
      if (m.mountpoint.startsWith(mprefix))
        inv.mounted.push({ name: m.mountpoint.slice(mprefix.length), mountpoint: m.mountpoint });
    }
    return inv;
  }
}
