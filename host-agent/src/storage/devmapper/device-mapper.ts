/**
 * Device-mapper operations with every argument validated before it reaches
 * the kernel: device names from a fixed alphabet, thin ids and sizes as
 * bounded integers, tables built here from numbers (never from text we were
 * given). Changes and questions go straight to the kernel as dm ioctls
 * (dm-ioctl.ts); only `dmsetup wait`, which blocks, is still a process.
 * Parsers for the `status` and `table` lines we rely on.
 */
import { existsSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { EnvironmentError, InternalError } from '../../errors.js';
import { CommandError, run, runSync } from '../../sys/exec.js';
import { jittered } from '../../retry.js';
import {
  DmIoctlError,
  devCreate,
  devRemove,
  devResume,
  devStatus,
  devSuspend,
  hasDeviceMapper,
  listDevices,
  type DevStatus,
  makeBlockNode,
  makedev,
  tableLoad,
  tableStatus,
  targetMessage,
} from './dm-ioctl.js';

/** No leading '-': a name must never read as an option. */
const namePattern = /^[A-Za-z0-9_.+][A-Za-z0-9_.+-]{0,126}$/;
/** dm-thin device ids are 24 bits. */
export const maxThinId = 2 ** 24 - 1;

/** Whether `name` may name a device-mapper device here (config checks THINRELAY_DM_POOL with it). */
export function isDmName(name: string): boolean {
  return namePattern.test(name) && name !== '.' && name !== '..';
}

/** Names reaching dmsetup are ours (prefix + object name) or checked config: a bad one is a bug. */
export function checkDmName(name: string): string {
  if (!isDmName(name))
    throw new InternalError(`invalid device-mapper name ${JSON.stringify(name)}`);
  return name;
}

export function checkThinId(id: number): number {
  if (!Number.isInteger(id) || id < 0 || id > maxThinId)
    throw new InternalError(`invalid thin device id ${String(id)} (0..${maxThinId})`);
  return id;
}

function checkCount(n: number, what: string): number {
  if (!Number.isSafeInteger(n) || n < 0) throw new InternalError(`invalid ${what} ${String(n)}`);
  return n;
}

/** dmsetup (or the kernel behind it) answered something we cannot read: the host's fault. */
function toolOutput(message: string): EnvironmentError {
  return new EnvironmentError(
    'TOOL_OUTPUT',
    message,
    'check the device-mapper tools (`dmsetup version`) and the kernel (dmesg)',
  );
}

/** The device named is there but is not a thin pool (e.g. THINRELAY_DM_POOL names a plain LV). */
function notThinPool(what: 'table' | 'status', line: string): EnvironmentError {
  return new EnvironmentError(
    'POOL_UNAVAILABLE',
    `not a thin-pool ${what}: ${line}`,
    'THINRELAY_DM_POOL must name a thin-pool device (lvcreate --type thin-pool), or unset it for `thinrelay pool create`',
  );
}

/** A data block size dm-thin accepts: 64 KiB to 1 GiB in 64 KiB steps (128-sector multiples). */
export function isBlockSectors(n: number): boolean {
  return Number.isInteger(n) && n >= 128 && n <= 2097152 && n % 128 === 0;
}

export interface DevNumber {
  major: number;
  minor: number;
}

export function devNumber(d: DevNumber): string {
  return `${checkCount(d.major, 'major')}:${checkCount(d.minor, 'minor')}`;
}

export function parseDevNumber(text: string): DevNumber {
  const m = /^(\d+):(\d+)$/.exec(text);
  if (m === null) throw toolOutput(`not a major:minor device number: ${JSON.stringify(text)}`);
  return { major: Number(m[1]), minor: Number(m[2]) };
}

/** The errno a failed dmsetup call reported, from its message. */
export function dmErrno(err: unknown): 'EBUSY' | 'ENODATA' | 'EEXIST' | 'ENXIO' | null {
  if (err instanceof DmIoctlError) {
    if (err.errno === 'ENODEV') return 'ENXIO';
    const known = ['EBUSY', 'ENODATA', 'EEXIST', 'ENXIO'] as const;
    return known.find((e) => e === err.errno) ?? null;
  }
  if (!(err instanceof CommandError)) return null;
  const text = err.stderr;
  if (/Device or resource busy/i.test(text)) return 'EBUSY';
  if (/No data available/i.test(text)) return 'ENODATA';
  if (/File exists/i.test(text)) return 'EEXIST';
  if (/No such device|does not exist/i.test(text)) return 'ENXIO';
  return null;
}

// ---- tables -------------------------------------------------------------

export interface ThinPoolTable {
  sectors: number;
  metadata: DevNumber;
  data: DevNumber;
  blockSectors: number;
  lowWaterBlocks: number;
  features: string[];
}

const poolFeatures = new Set([
  'skip_block_zeroing',
  'ignore_discard',
  'no_discard_passdown',
  'read_only',
  'error_if_no_space',
]);

export function isPoolFeature(f: string): boolean {
  return poolFeatures.has(f);
}

/** Its features and block size come from config or the pool definition, both checked when read. */
export function thinPoolTable(t: ThinPoolTable): string {
  for (const f of t.features)
    if (!isPoolFeature(f)) throw new InternalError(`unknown pool feature ${f}`);
  if (!isBlockSectors(t.blockSectors))
    throw new InternalError(`data block size ${t.blockSectors} must be a multiple of 128 sectors`);
  return [
    0,
    checkCount(t.sectors, 'pool length'),
    'thin-pool',
    devNumber(t.metadata),
    devNumber(t.data),
    checkCount(t.blockSectors, 'block size'),
    checkCount(t.lowWaterBlocks, 'low water mark'),
    t.features.length,
    ...t.features,
  ].join(' ');
}

export function thinTable(o: { sectors: number; pool: DevNumber; thinId: number }): string {
  return `0 ${checkCount(o.sectors, 'thin length')} thin ${devNumber(o.pool)} ${checkThinId(o.thinId)}`;
}

export function parseThinPoolTable(line: string): ThinPoolTable {
  const f = line.trim().split(/\s+/);
  if (f[2] !== 'thin-pool' || f.length < 8) throw notThinPool('table', line);
  const nFeatures = Number(f[7]);
  return {
    sectors: Number(f[1]),
    metadata: parseDevNumber(f[3]!),
    data: parseDevNumber(f[4]!),
    blockSectors: Number(f[5]),
    lowWaterBlocks: Number(f[6]),
    features: f.slice(8, 8 + nFeatures),
  };
}

export interface ThinTable {
  sectors: number;
  pool: DevNumber;
  thinId: number;
}

/** A thin device's table, "0 2097152 thin 253:0 5 [external origin]"; null for any other table. */
export function parseThinTable(text: string): ThinTable | null {
  const m = /^0 (\d+) thin (\d+:\d+) (\d+)(?: \S+)?$/.exec(text.trim());
  if (m === null) return null;
  return { sectors: Number(m[1]), pool: parseDevNumber(m[2]!), thinId: Number(m[3]) };
}

export interface ThinPoolStatus {
  transactionId: number;
  usedMetadataBlocks: number;
  totalMetadataBlocks: number;
  usedDataBlocks: number;
  totalDataBlocks: number;
  /** rw, ro, out_of_data_space, or Fail */
  mode: string;
  needsCheck: boolean;
  errorIfNoSpace: boolean;
  failed: boolean;
}

/**
 * `dmsetup status <pool>`: "0 <len> thin-pool <transaction id> <used
 * meta>/<total meta> <used data>/<total data> <held root> <mode> <discard>
 * <no-space policy> <needs_check|-> [metadata low watermark]", or
 * "0 <len> thin-pool Fail".
 */
export function parseThinPoolStatus(line: string): ThinPoolStatus {
  const f = line.trim().split(/\s+/);
  if (f[2] !== 'thin-pool') throw notThinPool('status', line);
  if (f[3] === 'Fail') {
    return {
      transactionId: -1,
      usedMetadataBlocks: 0,
      totalMetadataBlocks: 0,
      usedDataBlocks: 0,
      totalDataBlocks: 0,
      mode: 'Fail',
      needsCheck: true,
      errorIfNoSpace: false,
      failed: true,
    };
  }
  const ratio = (s: string | undefined): [number, number] => {
    const m = /^(\d+)\/(\d+)$/.exec(s ?? '');
    if (m === null) throw toolOutput(`unexpected thin-pool status: ${line}`);
    return [Number(m[1]), Number(m[2])];
  };
  const [usedMeta, totalMeta] = ratio(f[4]);
  const [usedData, totalData] = ratio(f[5]);
  return {
    transactionId: Number(f[3]),
    usedMetadataBlocks: usedMeta,
    totalMetadataBlocks: totalMeta,
    usedDataBlocks: usedData,
    totalDataBlocks: totalData,
    mode: f[7] ?? 'rw',
    needsCheck: f[10] === 'needs_check',
    errorIfNoSpace: f[9] === 'error_if_no_space',
    failed: false,
  };
}

// ---- commands -----------------------------------------------------------

/**
 * A synchronous ioctl as a promise: callers keep one async shape (and a
 * refusal reaches them as a rejection, not a throw).
 */
function settle<T>(call: () => T): Promise<T> {
  try {
    return Promise.resolve(call());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}

export interface DmDeviceInfo {
  name: string;
  major: number;
  minor: number;
  suspended: boolean;
}

/**
 * Info on one device, or null when it does not exist or has no live table
 * (a create a crash cut short: dmCreate loads it), or the kernel has no
 * device-mapper — one DM_DEV_STATUS ioctl.
 * It used to scan /sys/block/dm-*: a read per device, so 100 concurrent
 * Prepares cost thousands of reads.
 */
export function dmInfo(name: string): Promise<DmDeviceInfo | null> {
  return settle(() => dmInfoSync(name));
}

/** dmInfo, for callers holding the store's write lock (no await there). */
export function dmInfoSync(name: string): DmDeviceInfo | null {
  checkDmName(name);
  if (!hasDeviceMapper()) return null;
  let status: DevStatus;
  try {
    status = devStatus(checkDmName(name));
  } catch (err) {
    if (dmErrno(err) === 'ENXIO') return null;
    throw err;
  }
  if (!status.live) return null;
  return { name, major: status.major, minor: status.minor, suspended: status.suspended };
}

/** The names of every dm device (DM_LIST_DEVICES). */
export function dmNames(): Set<string> {
  if (!hasDeviceMapper()) return new Set();
  return new Set(listDevices().map((d) => d.name));
}

/**
 * Create, load, resume — what `dmsetup create --table` does. A device whose
 * table the kernel refuses is removed again: no half device stays behind.
 */
export function dmCreate(name: string, table: string): Promise<void> {
  return settle(() => dmCreateSync(name, table));
}

/** dmCreate, for callers holding the store's write lock. */
export function dmCreateSync(name: string, table: string): void {
  checkDmName(name);
  try {
    devCreate(name);
  } catch (err) {
    // The name is taken (EBUSY, as the kernel says it). Left without a table
    // by a crash between create and load: load it now.
    if (dmErrno(err) !== 'EBUSY' || devStatus(name).live) throw err;
  }
  try {
    tableLoad(name, table);
    devResume(name);
  } catch (err) {
    try {
      devRemove(name);
    } catch {
      // The error that matters is the load's; reconcile finds a leftover by name.
    }
    throw err;
  }
}

/** Loads a table into the inactive slot (`dmsetup reload`): live after dmResume. */
export function dmReload(name: string, table: string): Promise<void> {
  return settle(() => tableLoad(checkDmName(name), table));
}

export function dmTable(name: string): Promise<string> {
  return settle(() => tableStatus(checkDmName(name), { table: true }));
}

/**
 * The device's event counter: dm bumps it on a table load and on every event
 * its target raises (dm-thin: the low-water mark crossed, out of data space,
 * a mode change).
 */
export function dmEventCount(name: string): Promise<number> {
  return settle(() => devStatus(checkDmName(name)).eventNr);
}

/**
 * Blocks until the device's event counter exceeds `after` (at most
 * `timeoutMs`: then it resolves false). Aborting the signal kills the wait.
 */
export async function dmWaitEvent(
  name: string,
  after: number,
  opts: { signal: AbortSignal; timeoutMs: number },
): Promise<boolean> {
  try {
    await run('dmsetup', ['wait', '--', checkDmName(name), String(after)], opts);
    return true;
  } catch (err) {
    if (opts.signal.aborted) throw err;
    // Killed at the timeout: no event meanwhile.
    if (err instanceof CommandError && err.exitCode === null) return false;
    throw err;
  }
}

export function dmStatus(name: string): Promise<string> {
  return settle(() => tableStatus(checkDmName(name)));
}

export function dmSuspend(name: string): Promise<void> {
  return settle(() => devSuspend(checkDmName(name)));
}

export function dmResume(name: string): Promise<void> {
  return settle(() => devResume(checkDmName(name)));
}

/** The thin table of a device, or null when it is gone or maps something else. */
export async function dmThinTable(name: string): Promise<ThinTable | null> {
  try {
    return parseThinTable(await dmTable(name));
  } catch (err) {
    if (dmErrno(err) === 'ENXIO') return null;
    throw err;
  }
}

export type PoolMessage =
  | { op: 'create_thin'; thinId: number }
  | { op: 'create_snap'; thinId: number; originId: number }
  | { op: 'delete'; thinId: number }
  | { op: 'set_transaction_id'; from: number; to: number }
  | { op: 'reserve_metadata_snap' }
  | { op: 'release_metadata_snap' };

export function poolMessageText(m: PoolMessage): string {
  switch (m.op) {
    case 'create_thin':
    case 'delete':
      return `${m.op} ${checkThinId(m.thinId)}`;
    case 'create_snap':
      return `create_snap ${checkThinId(m.thinId)} ${checkThinId(m.originId)}`;
    case 'set_transaction_id':
      return `set_transaction_id ${checkCount(m.from, 'transaction id')} ${checkCount(m.to, 'transaction id')}`;
    case 'reserve_metadata_snap':
    case 'release_metadata_snap':
      return m.op;
  }
}

export function dmPoolMessage(pool: string, m: PoolMessage): Promise<void> {
  return settle(() => targetMessage(checkDmName(pool), poolMessageText(m)));
}

export interface RetryOptions {
  attempts?: number;
  delayMs?: number;
}

/** Remove a device; retried while it is busy (a closing opener, a racing udev scan). */
export async function dmRemove(name: string, opts: RetryOptions = {}): Promise<void> {
  const attempts = opts.attempts ?? 8;
  for (let i = 1; ; i++) {
    try {
      devRemove(checkDmName(name));
      return;
    } catch (err) {
      const errno = dmErrno(err);
      if (errno === 'ENXIO') return;
      if (errno !== 'EBUSY' || i >= attempts) throw err;
      await sleep(jittered((opts.delayMs ?? 50) * 2 ** Math.min(i, 5)));
    }
  }
}

/**
 * The device node: udev makes /dev/mapper/<name> on real hosts, but only
 * after the call returns; without udev (containers, minimal VMs) nobody
 * does. So we make it when it is missing, as libdevmapper does without
 * udev (udev, when it comes, replaces it with its link to the same device).
 */
export function dmEnsureNode(name: string): Promise<string> {
  return settle(() => dmEnsureNodeSync(name));
}

export function dmEnsureNodeSync(name: string): string {
  const path = `/dev/mapper/${checkDmName(name)}`;
  const info = dmInfoSync(name);
  const current = statSync(path, { throwIfNoEntry: false });
  if (info === null)
    throw new EnvironmentError(
      'DM_UNAVAILABLE',
      `${name} has no live device`,
      'see `dmsetup info`',
    );
  // The node must be this device's: one a crash left between a remove and
  // its node's drop names the old minor, which another device may hold now.
  if (current?.isBlockDevice() === true && BigInt(current.rdev) === makedev(info)) return path;
  if (current !== undefined) unlinkSync(path);
  mkdirSync('/dev/mapper', { recursive: true, mode: 0o755 });
  // A libc without mknod (glibc before 2.33): dmsetup makes it.
  if (!makeBlockNode(path, info)) runSync('dmsetup', ['mknodes', '--', name]);
  if (!existsSync(path))
    throw new EnvironmentError(
      'DM_UNAVAILABLE',
      `${path} did not appear`,
      'device nodes need a writable /dev (devtmpfs) and udev or `dmsetup mknodes`; see `thinrelay doctor`',
    );
  return path;
}

/** Drop a stale /dev/mapper node of a removed device (udev drops its own link). */
export async function dmDropNode(name: string): Promise<void> {
  const path = `/dev/mapper/${checkDmName(name)}`;
  if (!existsSync(path) || (await dmInfo(name)) !== null) return;
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
