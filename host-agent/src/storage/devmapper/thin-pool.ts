/**
 * The thin pool itself: its lifecycle (create, reload after a reboot,
 * adopt, destroy), its status and free-space floors, its readiness checks
 * and the thin ids its metadata holds. The thin devices in it are
 * devmapper-backend.ts's.
 */
import { existsSync, readFileSync, rmdirSync } from 'node:fs';
import { deviceNodeCheck, rootCheck, toolChecks } from '../readiness.js';
import type { SpaceFloor } from '../../config.js';
import { EnvironmentError, InternalError, UsageError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { StateStore } from '../../store/index.js';
import { run } from '../../sys/exec.js';
import type { BackendAction, PoolStatus, ReadinessCheck } from '../backend.js';
import {
  dmEventCount,
  dmInfo,
  dmStatus,
  dmTable,
  dmWaitEvent,
  parseThinPoolStatus,
  parseThinPoolTable,
  type DevNumber,
  type ThinPoolStatus,
} from './device-mapper.js';
import {
  bringUpSync,
  createPoolFrom,
  destroyDefinedPool,
  readDefinition,
  type PoolDefinition,
} from './pool-setup.js';
import { dmDriverVersion } from './dm-ioctl.js';
import { PoolTransactions } from './pool-transactions.js';
import { parseThinDump, type ThinDump } from './thin-metadata.js';

export interface ThinPoolOptions {
  /** The pool's dm name. */
  name: string;
  /** True when attached by name (THINRELAY_DM_POOL): thinrelay did not make it. */
  attached: boolean;
  /** Where a pool thinrelay creates keeps its definition (and its loop files). */
  dmDir: string;
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

function floorBytes(floor: SpaceFloor, total: number): number {
  return 'bytes' in floor ? floor.bytes : Math.ceil((total * floor.percent) / 100);
}

export class ThinPool {
  readonly name: string;
  private txCache: PoolTransactions | undefined;

  constructor(private readonly opts: ThinPoolOptions) {
    this.name = opts.name;
  }

  /** Every change to the pool's thin devices is one of its transactions. */
  get tx(): PoolTransactions {
    if (this.opts.store === null)
      throw new InternalError('the devmapper backend was opened without a store');
    this.txCache ??= new PoolTransactions(
      this.opts.store,
      this.name,
      this.opts.owner,
      this.opts.logger,
    );
    return this.txCache;
  }

  private definition(): PoolDefinition | null {
    const def = readDefinition(this.opts.dmDir);
    return def !== null && def.name === this.name ? def : null;
  }

  /** The pool's device number; POOL_UNAVAILABLE when it does not exist. */
  async device(): Promise<DevNumber> {
    const info = await dmInfo(this.name);
    if (info === null)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `thin pool ${this.name} does not exist`,
        !this.opts.attached
          ? 'thinrelay pool create --size 20G (or --devices DATA,META), or set THINRELAY_DM_POOL'
          : `create it (LVM: lvcreate --type thin-pool), or fix THINRELAY_DM_POOL`,
      );
    return { major: info.major, minor: info.minor };
  }

  async rawStatus(): Promise<ThinPoolStatus> {
    return parseThinPoolStatus(await dmStatus(this.name));
  }

  /**
   * Start-up: a pool thinrelay created comes back after a reboot (same
   * table, existing metadata); a change left open by a dead process is
   * committed or rolled back; a pool seen for the first time is adopted.
   */
  async bringUp(): Promise<BackendAction[]> {
    const actions: BackendAction[] = [];
    const def = this.definition();
    if (def !== null && (await dmInfo(def.name)) === null) {
      const store = this.opts.store;
      if (store === null)
        throw new InternalError('the devmapper backend was opened without a store');
      // The store's write lock: processes starting together load the table once.
      store.tx(() => bringUpSync(def));
      actions.push({
        object: def.name,
        action: 'reloaded',
        reason: 'pool table missing (reboot?): loaded over its existing metadata',
      });
    }
    await this.device();
    actions.push(...(await this.tx.adopt(() => this.listThinIds())));
    actions.push(...(await this.tx.recover()));
    return actions;
  }

  async create(o: { sizeBytes?: number; devices?: string[] }): Promise<PoolStatus> {
    if (this.opts.attached && (await dmInfo(this.name)) !== null)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `pool ${this.name} already exists and is attached by name (THINRELAY_DM_POOL)`,
        'nothing to create: thinrelay uses it as it is',
      );
    await createPoolFrom(
      this.opts.dmDir,
      {
        name: this.name,
        blockSectors: this.opts.blockSectors,
        lowWaterSectors: this.opts.lowWaterSectors,
        skipBlockZeroing: this.opts.skipBlockZeroing,
      },
      o,
    );
    if (this.opts.store !== null) await this.bringUp();
    return this.status();
  }

  /** Destroy a pool thinrelay created; `holdsAnything` counts the thin devices left (0: none). */
  async destroy(holdsAnything: () => Promise<number>): Promise<void> {
    const def = this.definition();
    if (def === null)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `pool ${this.name} was not created by thinrelay here; it is not destroyed`,
        'remove it with the tool that made it (lvremove, dmsetup remove)',
      );
    if ((await dmInfo(def.name)) !== null) {
      const held = await holdsAnything();
      if (held > 0)
        // A refusal, not a host fault: the operator asked for less than it takes.
        throw new UsageError(
          'IN_USE',
          `pool ${def.name} still holds ${held} thin device(s)`,
          'remove the images first, or use `pool destroy --force`',
        );
    }
    await destroyDefinedPool(this.opts.dmDir, def);
    if (existsSync(this.opts.dmDir)) rmdirSync(this.opts.dmDir);
  }

  async status(): Promise<PoolStatus> {
    const base = {
      backend: 'devmapper' as const,
      location: this.name,
      metadataTotalBytes: null,
      metadataUsedBytes: null,
    };
    if ((await dmInfo(this.name)) === null) {
      const def = this.definition();
      return {
        ...base,
        exists: false,
        dataTotalBytes: 0,
        dataUsedBytes: 0,
        freeBytes: 0,
        healthy: null,
        detail:
          def === null
            ? 'pool does not exist (thinrelay pool create, or THINRELAY_DM_POOL)'
            : 'pool is defined but not loaded (reboot?): the next thinrelay start reloads it',
      };
    }
    const table = parseThinPoolTable(await dmTable(this.name));
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
        (this.definition()?.source.kind === 'files' ? '; loop files under ' + this.opts.dmDir : ''),
    };
  }

  async waitForEvent(opts: { signal: AbortSignal; timeoutMs: number }): Promise<boolean> {
    const seen = await dmEventCount(this.name);
    return dmWaitEvent(this.name, seen, opts);
  }

  async ensureSpace(bytes: number): Promise<void> {
    const status = await this.status();
    if (!status.exists) await this.device();
    if (status.healthy !== true)
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `thin pool ${this.name} is not healthy: ${status.detail}`,
        'thinrelay doctor; free space (thinrelay gc) or extend the pool',
      );
    const metaTotal = status.metadataTotalBytes ?? 0;
    const metaFree = metaTotal - (status.metadataUsedBytes ?? 0);
    const metaFloor = floorBytes(this.opts.minFreeMetadata, metaTotal);
    if (metaFree < metaFloor)
      throw new EnvironmentError(
        'LOW_SPACE',
        `thin pool ${this.name} metadata has ${metaFree} bytes free, below the floor of ${metaFloor}`,
        'thinrelay gc, or extend the metadata device (lvextend --poolmetadatasize)',
      );
    if (status.freeBytes < bytes)
      throw new EnvironmentError(
        'LOW_SPACE',
        `thin pool ${this.name} can take ${status.freeBytes} more bytes above its free-space floor; this image needs up to ${bytes}`,
        'thinrelay gc, extend the pool, or lower THINRELAY_POOL_MIN_FREE_DATA',
      );
  }

  /** What the host needs for device-mapper at all (doctor runs these first). */
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
      // thinrelay changes devices through dm ioctls, not dmsetup: check that path works.
      let version: string | null = null;
      let failure = '';
      try {
        version = dmDriverVersion();
      } catch (err) {
        failure = (err as Error).message;
      }
      checks.push({
        name: 'dm ioctl',
        ok: version !== null,
        detail: version !== null ? `device-mapper interface ${version}` : failure,
        hint: 'thinrelay calls /dev/mapper/control through node:ffi: run it as root on the Node.js runtime its package ships',
      });
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
  async checks(): Promise<ReadinessCheck[]> {
    const s = await this.status();
    const checks: ReadinessCheck[] = [
      {
        name: 'thin pool',
        ok: s.exists && s.healthy === true,
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

  /** The metadata device, as a path thin_dump can open (works without udev too). */
  private async metadataDevicePath(): Promise<string> {
    const table = parseThinPoolTable(await dmTable(this.name));
    const { major, minor } = table.metadata;
    const uevent = readFileSync(`/sys/dev/block/${major}:${minor}/uevent`, 'utf8');
    const name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
    if (name === undefined)
      throw new EnvironmentError(
        'TOOL_OUTPUT',
        `the kernel gives no device name for the pool's metadata device ${major}:${minor}`,
        `check /sys/dev/block/${major}:${minor}/uevent and the pool's table (dmsetup table ${this.name})`,
      );
    return `/dev/${name}`;
  }

  /** The pool metadata's thin devices, read from a metadata snapshot (the pool must be held). */
  private async dumpUnlocked(): Promise<ThinDump> {
    const metadata = await this.metadataDevicePath();
    return this.tx.withMetadataSnap(async () =>
      parseThinDump(
        await run('thin_dump', ['--metadata-snap', '--skip-mappings', '--format', 'xml', metadata]),
      ),
    );
  }

  async listThinIds(): Promise<number[]> {
    return (await this.tx.hold(() => this.dumpUnlocked())).thinIds;
  }

  /**
   * Bytes of data the thin id maps, as of the pool's last metadata commit
   * (blocks it shares with its origin counted too); 0 when the pool has no such id.
   */
  async mappedBytes(thinId: number): Promise<number> {
    const dump = await this.tx.hold(() => this.dumpUnlocked());
    return (dump.mappedBlocks.get(thinId) ?? 0) * dump.blockSectors * 512;
  }
}
