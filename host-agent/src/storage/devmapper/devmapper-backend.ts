/**
 * The devmapper backend: volumes and snapshots are thin devices of one thin
 * pool. A volume is a thin device (mkfs'd, unpacked, then deactivated) or,
 * for a layer above a base, a create_snap of the layer below it (mounted
 * without mkfs, the layer applied on top, deactivated); a snapshot is a
 * create_snap of a volume, activated as /dev/mapper/<name>.
 * Thin ids come from the store; every create and delete is a pool
 * transaction (pool-transactions.ts). Device names are derived from object
 * ids plus a per-state-dir prefix, never from anything an uploader controls.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, realpathSync, rmdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { deviceNodeCheck, rootCheck, toolChecks } from '../readiness.js';
import type { SpaceFloor } from '../../config.js';
import { EnvironmentError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { StateStore } from '../../store/index.js';
import { run } from '../../sys/exec.js';
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
  dmEventCount,
  dmInfo,
  dmRemove,
  dmResume,
  dmStatus,
  dmSuspend,
  dmTable,
  dmThinTables,
  dmWaitEvent,
  parseThinPoolStatus,
  parseThinPoolTable,
  thinTable,
  type DevNumber,
  type ThinPoolStatus,
} from './dmsetup.js';
import {
  bringUpSync,
  createPoolFrom,
  destroyDefinedPool,
  readDefinition,
  type PoolDefinition,
} from './pool-setup.js';
import { PoolTransactions } from './pool-transactions.js';
import { parseThinDump } from './thin-metadata.js';

export interface DevmapperOptions {
  stateDir: string;
  /** An existing pool to attach to by name; null = the pool `pool create` makes. */
  poolName: string | null;
  blockSectors: number;
  lowWaterSectors: number;
  skipBlockZeroing: boolean;
  minFreeData: SpaceFloor;
  minFreeMetadata: SpaceFloor;
  /** Needed by everything that changes the pool (doctor runs without it). */
  store: StateStore | null;
  owner: string;
  logger: Logger;
}

const metadataBlockBytes = 4096;

/** The prefix of every dm name of one state dir, so agents on one host never collide. */
export function dmPrefixFor(stateDir: string): string {
  let dir = resolve(stateDir);
  if (existsSync(dir)) dir = realpathSync(dir);
  return `thinrelay-${createHash('sha256').update(dir).digest('hex').slice(0, 8)}-`;
}

function floorBytes(floor: SpaceFloor, total: number): number {
  return 'bytes' in floor ? floor.bytes : Math.ceil((total * floor.percent) / 100);
}

export class DevmapperBackend implements StorageBackend {
  readonly name = 'devmapper' as const;
  readonly usesThinIds = true;
  readonly prefix: string;
  readonly poolName: string;
  readonly dmDir: string;
  readonly mountDir: string;
  private txCache: PoolTransactions | undefined;

  constructor(private readonly opts: DevmapperOptions) {
    this.prefix = dmPrefixFor(opts.stateDir);
    this.poolName = checkDmName(opts.poolName ?? `${this.prefix}pool`);
    this.dmDir = join(opts.stateDir, 'dm');
    this.mountDir = join(opts.stateDir, 'mnt');
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
    if (this.opts.store === null)
      throw new Error('the devmapper backend was opened without a store');
    this.txCache ??= new PoolTransactions(
      this.opts.store,
      this.poolName,
      this.opts.owner,
      this.opts.logger,
    );
    return this.txCache;
  }

  // ---- the pool ---------------------------------------------------------

  private definition(): PoolDefinition | null {
    const def = readDefinition(this.dmDir);
    return def !== null && def.name === this.poolName ? def : null;
  }

  private async poolDevice(): Promise<DevNumber> {
    const info = await dmInfo(this.poolName);
    if (info === null)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `thin pool ${this.poolName} does not exist`,
        this.opts.poolName === null
          ? 'thinrelay pool create --size 20G (or --devices DATA,META), or set THINRELAY_DM_POOL'
          : `create it (LVM: lvcreate --type thin-pool), or fix THINRELAY_DM_POOL`,
      );
    return { major: info.major, minor: info.minor };
  }

  private async rawStatus(): Promise<ThinPoolStatus> {
    return parseThinPoolStatus(await dmStatus(this.poolName));
  }

  /**
   * Start-up: a pool thinrelay created comes back after a reboot (same
   * table, existing metadata); a change left open by a dead process is
   * committed or rolled back; a pool seen for the first time is adopted.
   */
  async prepare(): Promise<BackendAction[]> {
    const actions: BackendAction[] = [];
    const def = this.definition();
    if (def !== null && (await dmInfo(def.name)) === null) {
      const store = this.opts.store;
      if (store === null) throw new Error('the devmapper backend was opened without a store');
      // The store's write lock: processes starting together load the table once.
      store.tx(() => bringUpSync(def));
      actions.push({
        object: def.name,
        action: 'reloaded',
        reason: 'pool table missing (reboot?): loaded over its existing metadata',
      });
    }
    await this.poolDevice();
    actions.push(...(await this.tx.adopt(() => this.listThinIds())));
    actions.push(...(await this.tx.recover()));
    return actions;
  }

  async createPool(o: { sizeBytes?: number; devices?: string[] }): Promise<PoolStatus> {
    if (this.opts.poolName !== null && (await dmInfo(this.poolName)) !== null)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `pool ${this.poolName} already exists and is attached by name (THINRELAY_DM_POOL)`,
        'nothing to create: thinrelay uses it as it is',
      );
    await createPoolFrom(
      this.dmDir,
      {
        name: this.poolName,
        blockSectors: this.opts.blockSectors,
        lowWaterSectors: this.opts.lowWaterSectors,
        skipBlockZeroing: this.opts.skipBlockZeroing,
      },
      o,
    );
    if (this.opts.store !== null) await this.prepare();
    return this.poolStatus();
  }

  async destroyPool(): Promise<void> {
    const def = this.definition();
    if (def === null)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `pool ${this.poolName} was not created by thinrelay here; it is not destroyed`,
        'remove it with the tool that made it (lvremove, dmsetup remove)',
      );
    if ((await dmInfo(def.name)) !== null) {
      const inv = await this.inventory();
      if (inv.objects.length > 0 || inv.attached.length > 0 || inv.mounted.length > 0)
        throw new EnvironmentError(
          'POOL_UNAVAILABLE',
          `pool ${def.name} still holds ${inv.objects.length} thin device(s)`,
          'remove the images first, or use --force',
        );
    }
    await destroyDefinedPool(this.dmDir, def);
    if (existsSync(this.dmDir)) rmdirSync(this.dmDir);
  }

  async poolStatus(): Promise<PoolStatus> {
    const base = {
      backend: this.name,
      location: this.poolName,
      metadataTotalBytes: null,
      metadataUsedBytes: null,
    };
    if ((await dmInfo(this.poolName)) === null) {
      const def = this.definition();
      return {
        ...base,
        exists: false,
        dataTotalBytes: 0,
        dataUsedBytes: 0,
        freeBytes: 0,
        healthy: false,
        detail:
          def === null
            ? 'pool does not exist (thinrelay pool create, or THINRELAY_DM_POOL)'
            : 'pool is defined but not loaded (reboot?): the next thinrelay start reloads it',
      };
    }
    const table = parseThinPoolTable(await dmTable(this.poolName));
    const s = await this.rawStatus();
    const block = table.blockSectors * 512;
    const problems: string[] = [];
    if (s.failed) problems.push('FAILED');
    if (s.mode !== 'rw') problems.push(`mode ${s.mode}`);
    if (s.needsCheck) problems.push('needs_check set (run thin_check)');
    if (!s.errorIfNoSpace) problems.push('queue_if_no_space (a full pool would hang I/O)');
    const dataTotal = s.totalDataBlocks * block;
    const dataFree = (s.totalDataBlocks - s.usedDataBlocks) * block;
    const metaTotal = s.totalMetadataBlocks * metadataBlockBytes;
    const free = Math.max(0, dataFree - floorBytes(this.opts.minFreeData, dataTotal));
    return {
      ...base,
      exists: true,
      dataTotalBytes: dataTotal,
      dataUsedBytes: s.usedDataBlocks * block,
      metadataTotalBytes: metaTotal,
      metadataUsedBytes: s.usedMetadataBlocks * metadataBlockBytes,
      freeBytes: free,
      healthy: problems.length === 0,
      detail:
        `transaction ${s.transactionId}, block ${table.blockSectors} sectors, ${s.mode}` +
        (problems.length > 0 ? `; ${problems.join('; ')}` : '') +
        (this.definition()?.source.kind === 'files' ? '; loop files under ' + this.dmDir : ''),
    };
  }

  async waitForPoolEvent(opts: { signal: AbortSignal; timeoutMs: number }): Promise<boolean> {
    const seen = await dmEventCount(this.poolName);
    return dmWaitEvent(this.poolName, seen, opts);
  }

  async ensureSpace(bytes: number): Promise<void> {
    const status = await this.poolStatus();
    if (!status.exists) await this.poolDevice();
    if (!status.healthy)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `thin pool ${this.poolName} is not healthy: ${status.detail}`,
        'thinrelay doctor; free space (thinrelay gc) or extend the pool',
      );
    const metaTotal = status.metadataTotalBytes ?? 0;
    const metaFree = metaTotal - (status.metadataUsedBytes ?? 0);
    const metaFloor = floorBytes(this.opts.minFreeMetadata, metaTotal);
    if (metaFree < metaFloor)
      throw new EnvironmentError(
        'LOW_SPACE',
        `thin pool ${this.poolName} metadata has ${metaFree} bytes free, below the floor of ${metaFloor}`,
        'thinrelay gc, or extend the metadata device (lvextend --poolmetadatasize)',
      );
    if (status.freeBytes < bytes)
      throw new EnvironmentError(
        'LOW_SPACE',
        `thin pool ${this.poolName} can take ${status.freeBytes} more bytes above its free-space floor; this image needs up to ${bytes}`,
        'thinrelay gc, extend the pool, or lower THINRELAY_POOL_MIN_FREE_DATA',
      );
  }

  // ---- readiness --------------------------------------------------------

  async checkReadiness(): Promise<ReadinessCheck[]> {
    const device = deviceNodeCheck(
      'device-mapper',
      '/dev/mapper/control',
      'modprobe dm_mod (a kernel with device-mapper is required)',
    );
    const checks = [
      rootCheck('device-mapper needs it'),
      device,
      ...(await toolChecks([
        ['dmsetup', 'dmsetup'],
        ['thin_dump', 'thin-provisioning-tools'],
        ['mkfs.ext4', 'e2fsprogs'],
        ['e2fsck', 'e2fsprogs'],
        ['resize2fs', 'e2fsprogs'],
        ['losetup', 'util-linux'],
        ['blockdev', 'util-linux'],
      ])),
    ];
    const control = device.ok;
    if (control) {
      let targets: string;
      try {
        targets = await run('dmsetup', ['targets']);
      } catch (err) {
        targets = `dmsetup targets failed: ${(err as Error).message}`;
      }
      const thin = /^thin-pool\s/m.test(targets);
      checks.push({
        name: 'dm_thin_pool',
        ok: thin,
        detail: thin ? 'thin-pool target available' : 'thin-pool target not loaded',
        hint: 'modprobe dm_thin_pool',
      });
    }
    return checks;
  }

  /** Doctor's pool check: exists, healthy, above both free-space floors. */
  async poolChecks(): Promise<ReadinessCheck[]> {
    const s = await this.poolStatus();
    const checks: ReadinessCheck[] = [
      {
        name: 'thin pool',
        ok: s.exists && s.healthy,
        detail: `${s.location}: ${s.detail}`,
        hint: s.exists
          ? 'see dmesg; thin_check the metadata; extend a full pool'
          : 'thinrelay pool create --size 20G (or --devices DATA,META), or THINRELAY_DM_POOL',
      },
    ];
    if (!s.exists) return checks;
    const dataFloor = floorBytes(this.opts.minFreeData, s.dataTotalBytes);
    const dataFree = s.dataTotalBytes - s.dataUsedBytes;
    checks.push({
      name: 'pool data space',
      ok: dataFree >= dataFloor,
      detail: `${dataFree} bytes free of ${s.dataTotalBytes} (floor ${dataFloor})`,
      hint: 'thinrelay gc, or extend the data device',
    });
    const metaTotal = s.metadataTotalBytes ?? 0;
    const metaFloor = floorBytes(this.opts.minFreeMetadata, metaTotal);
    const metaFree = metaTotal - (s.metadataUsedBytes ?? 0);
    checks.push({
      name: 'pool metadata space',
      ok: metaFree >= metaFloor,
      detail: `${metaFree} bytes free of ${metaTotal} (floor ${metaFloor})`,
      hint: 'thinrelay gc, or extend the metadata device',
    });
    return checks;
  }

  // ---- thin devices -----------------------------------------------------

  private sectorsOf(o: Pick<ObjectSpec, 'sizeBytes'>): number {
    return Math.ceil(o.sizeBytes / 512);
  }

  private requireThinId(o: ObjectSpec): number {
    if (o.thinId === null) throw new Error(`${o.name} has no thin id`);
    return o.thinId;
  }

  /** Activate a thin device under our name; an existing device must map the same thin id. */
  private async activateThin(o: ObjectSpec): Promise<string> {
    const name = this.deviceName(o);
    const thinId = this.requireThinId(o);
    if ((await dmInfo(name)) !== null) {
      const current = (await dmThinTables()).find((t) => t.name === name);
      const pool = await this.poolDevice();
      if (
        current !== undefined &&
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
      thinTable({ sectors: this.sectorsOf(o), pool: await this.poolDevice(), thinId }),
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
    await this.tx.hold(() =>
      this.tx.change({ op: 'create_thin', thinId, purpose: `volume ${volume.name}` }),
    );
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
    // A thin device is as long as its table says: activated at the clone's larger
    // size, its filesystem is grown to fill it (left active for mountForApply).
    if (volume.sizeBytes > volume.origin.sizeBytes) await growExt4(await this.activateThin(volume));
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
      const s = await this.rawStatus();
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
    const origin = this.deviceName(o.origin);
    await this.tx.hold(async () => {
      // The kernel's rule: an active origin is suspended around create_snap.
      const active = (await dmInfo(origin)) !== null;
      if (active) await dmSuspend(origin);
      try {
        await this.tx.change({ op: 'create_snap', thinId, originId, purpose });
      } finally {
        if (active) await dmResume(origin);
      }
    });
  }

  async activate(snapshot: SnapshotSpec): Promise<string> {
    return this.activateThin(snapshot);
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
    return this.tx.hold(() => this.tx.change({ op: 'delete', thinId, purpose }));
  }

  /** A stray is a device in our namespace that maps no object of ours: remove the device only. */
  async removeStray(deviceName: string): Promise<void> {
    if (!deviceName.startsWith(this.prefix))
      throw new Error(`${deviceName} is not in our namespace`);
    await dmRemove(checkDmName(deviceName));
    await dmDropNode(deviceName);
  }

  private async unmountOf(o: Pick<ObjectSpec, 'name'>): Promise<void> {
    const mountpoint = this.mountpointOf(o);
    if (isMounted(mountpoint)) await unmount(mountpoint);
    if (existsSync(mountpoint)) rmdirSync(mountpoint);
  }

  // ---- what the pool really holds ---------------------------------------

  /** The metadata device, as a path thin_dump can open (works without udev too). */
  private async metadataDevicePath(): Promise<string> {
    const table = parseThinPoolTable(await dmTable(this.poolName));
    const { major, minor } = table.metadata;
    const uevent = readFileSync(`/sys/dev/block/${major}:${minor}/uevent`, 'utf8');
    const name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
    if (name === undefined) throw new Error(`no device name for ${major}:${minor}`);
    return `/dev/${name}`;
  }

  /** Thin ids in the pool metadata, read from a metadata snapshot (the pool must be held). */
  private async listThinIdsUnlocked(): Promise<number[]> {
    const metadata = await this.metadataDevicePath();
    return this.tx.withMetadataSnap(
      async () =>
        parseThinDump(
          await run('thin_dump', [
            '--metadata-snap',
            '--skip-mappings',
            '--format',
            'xml',
            metadata,
          ]),
        ).thinIds,
    );
  }

  async listThinIds(): Promise<number[]> {
    return this.tx.hold(() => this.listThinIdsUnlocked());
  }

  async inventory(): Promise<BackendInventory> {
    const inv: BackendInventory = { objects: [], attached: [], mounted: [], strays: [] };
    const pool = await this.poolDevice();
    for (const thinId of await this.listThinIds()) inv.objects.push({ name: null, thinId });
    for (const t of await dmThinTables()) {
      if (!t.name.startsWith(this.prefix)) continue;
      const name = t.name.slice(this.prefix.length);
      const samePool = t.pool.major === pool.major && t.pool.minor === pool.minor;
      if (parseObjectName(name) === null || !samePool) {
        inv.strays.push({
          description: samePool
            ? 'device in our namespace that maps no object'
            : 'device in our namespace that maps another pool',
          path: t.name,
          owned: true,
        });
        continue;
      }
      inv.attached.push({ name, devicePath: `/dev/mapper/${t.name}`, thinId: t.thinId });
    }
    const mprefix = this.mountDir + '/';
    for (const m of listMounts()) {
      if (m.mountpoint.startsWith(mprefix))
        inv.mounted.push({ name: m.mountpoint.slice(mprefix.length), mountpoint: m.mountpoint });
    }
    return inv;
  }
}
