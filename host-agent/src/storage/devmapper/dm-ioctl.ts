/**
 * The device-mapper control interface called directly: the kernel's dm
 * ioctls on /dev/mapper/control through node:ffi, so creating, loading,
 * resuming, messaging or removing a device costs a system call instead of a
 * dmsetup process (a process start was most of a Prepare's time: about a
 * second each under User-Mode Linux, a few ms on a host). This file owns the
 * ABI (linux/dm-ioctl.h, version 4): struct dm_ioctl and dm_target_spec
 * layouts, command numbers and flags. Callers use dmsetup.ts, which checks
 * every name, table and message before it reaches here.
 *
 * The calls are synchronous: the ones we make on hot paths (create, load,
 * resume, a pool message, remove, status) are metadata operations that take
 * microseconds to a few milliseconds; `dmsetup wait`, which blocks for as
 * long as it is told, stays a process.
 */
import { openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { getSystemErrorName } from 'node:util';
import { EnvironmentError, InternalError } from '../../errors.js';
import { CommandError } from '../../sys/exec.js';

const controlPath = '/dev/mapper/control';
const headerSize = 312; // sizeof(struct dm_ioctl), 8-aligned: data starts here
const specSize = 40; // sizeof(struct dm_target_spec)
const nameLen = 128; // DM_NAME_LEN
/** Asking for 4.0.0: every call here exists since the first version-4 interface. */
const version: [number, number, number] = [4, 0, 0];

/** DM_*_CMD numbers (linux/dm-ioctl.h). */
const cmd = {
  version: 0,
  listDevices: 2,
  devCreate: 3,
  devRemove: 4,
  devSuspend: 6,
  devStatus: 7,
  tableLoad: 9,
  tableStatus: 12,
  targetMsg: 14,
} as const;
type Command = keyof typeof cmd;

const flag = {
  readOnly: 1 << 0,
  suspend: 1 << 1,
  statusTable: 1 << 4,
  activePresent: 1 << 5,
  bufferFull: 1 << 8,
} as const;

/** _IOWR(0xfd, nr, struct dm_ioctl): the same encoding on x86-64 and arm64. */
function request(nr: number): bigint {
  return BigInt((3 << 30) >>> 0) | BigInt(headerSize << 16) | BigInt(0xfd << 8) | BigInt(nr);
}

interface Libc {
  ioctl(fd: number, request: bigint, arg: Buffer): number;
  __errno_location(): bigint;
  strerror(errno: number): bigint;
  mknod: ((path: string, mode: number, dev: bigint) => number) | null;
}

interface Ffi {
  getInt32(pointer: bigint, offset: number): number;
  toString(pointer: bigint): string | null;
}

let libc: { fns: Libc; ffi: Ffi } | null = null;
let controlFd: number | null = null;

/** node:ffi is experimental in Node 26: load it without its one-time warning on stderr. */
function loadFfi(): { fns: Libc; ffi: Ffi } {
  if (libc !== null) return libc;
  const emitWarning = process.emitWarning.bind(process);
  process.emitWarning = (warning: string | Error, ...rest: unknown[]) => {
    const text = typeof warning === 'string' ? warning : warning.message;
    if (/\bFFI\b/.test(text)) return;
    (emitWarning as (w: string | Error, ...a: unknown[]) => void)(warning, ...rest);
  };
  let ffi: typeof import('node:ffi');
  try {
    ffi = createRequire(import.meta.url)('node:ffi') as typeof import('node:ffi');
  } catch (err) {
    throw new EnvironmentError(
      'DM_UNAVAILABLE',
      `node:ffi is not available in this Node.js runtime (${process.version}): ${(err as Error).message}`,
      'run thinrelay on the Node.js runtime its package ships (node 26 or later, without --no-experimental-ffi)',
      { cause: err },
    );
  } finally {
    process.emitWarning = emitWarning;
  }
  const { functions } = ffi.dlopen('libc.so.6', {
    ioctl: { return: 'i32', arguments: ['i32', 'u64', 'buffer'] },
    __errno_location: { return: 'pointer', arguments: [] },
    strerror: { return: 'pointer', arguments: ['i32'] },
  });
  const fns: Libc = {
    ioctl: (fd, req, arg) => functions.ioctl(fd, req, arg),
    __errno_location: () => functions.__errno_location(),
    strerror: (errno) => functions.strerror(errno),
    mknod: null,
  };
  try {
    // glibc 2.33 and later export mknod; older ones only __xmknod.
    const { functions: more } = ffi.dlopen('libc.so.6', {
      mknod: { return: 'i32', arguments: ['string', 'u32', 'u64'] },
    });
    fns.mknod = (path, mode, dev) => more.mknod(path, mode, dev);
  } catch {
    fns.mknod = null;
  }
  libc = { fns, ffi };
  return libc;
}

function control(): number {
  if (controlFd !== null) return controlFd;
  try {
    controlFd = openSync(controlPath, 'r+');
  } catch (err) {
    throw new EnvironmentError(
      'DM_UNAVAILABLE',
      `cannot open ${controlPath}: ${(err as Error).message}`,
      'load the dm_mod and dm_thin_pool modules (modprobe dm_thin_pool) and run as root; see `thinrelay doctor`',
      { cause: err },
    );
  }
  return controlFd;
}

/**
 * Whether this kernel has device-mapper at all: false when its control
 * device is missing or has no driver behind it (ENOENT, ENODEV, ENXIO). A
 * question about a device then has a true answer (there is none); only a
 * change fails, with DM_UNAVAILABLE.
 */
export function hasDeviceMapper(): boolean {
  if (controlFd !== null) return true;
  try {
    control();
    return true;
  } catch (err) {
    const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO') return false;
    throw err;
  }
}

/** A dm ioctl the kernel refused; its text reads like dmsetup's, so existing matching still works. */
export class DmIoctlError extends CommandError {
  constructor(
    readonly op: string,
    readonly device: string,
    readonly errno: string,
    message: string,
  ) {
    super(
      `dm ioctl ${op} ${device}`,
      null,
      `device-mapper: ${op} ioctl on ${device} failed: ${message}`,
    );
    this.name = 'DmIoctlError';
  }
}

interface Reply {
  flags: number;
  eventNr: number;
  openCount: number;
  targetCount: number;
  dev: { major: number; minor: number };
  /** The whole buffer, header included; data at `dataStart`. */
  buf: Buffer;
  dataStart: number;
  dataSize: number;
}

/** errno of the call just made, as its name and libc's text (what dmsetup would print). */
function lastError(): [name: string, text: string] {
  const { fns, ffi } = loadFfi();
  const errno = ffi.getInt32(fns.__errno_location(), 0);
  return [getSystemErrorName(-errno), ffi.toString(fns.strerror(errno)) ?? `errno ${errno}`];
}

function decodeDev(dev: bigint): { major: number; minor: number } {
  // huge_encode_dev: minor's low byte, major, then minor's high bits.
  const d = Number(dev & 0xffffffffn);
  return { major: (d & 0xfff00) >>> 8, minor: (d & 0xff) | ((d >>> 12) & 0xfff00) };
}

function call(
  op: Command,
  o: { name?: string; flags?: number; data?: Buffer; targetCount?: number; outSize?: number },
): Reply {
  const { fns } = loadFfi();
  let size = Math.max(headerSize + (o.data?.length ?? 0), o.outSize ?? 0);
  for (;;) {
    const buf = Buffer.alloc(size);
    buf.writeUInt32LE(version[0], 0);
    buf.writeUInt32LE(version[1], 4);
    buf.writeUInt32LE(version[2], 8);
    buf.writeUInt32LE(size, 12); // data_size
    buf.writeUInt32LE(headerSize, 16); // data_start
    buf.writeUInt32LE(o.targetCount ?? 0, 20);
    buf.writeUInt32LE(o.flags ?? 0, 28);
    if (o.name !== undefined) {
      if (Buffer.byteLength(o.name) >= nameLen)
        throw new InternalError(`dm name too long: ${o.name}`);
      buf.write(o.name, 48, 'utf8');
    }
    o.data?.copy(buf, headerSize);
    const rc = fns.ioctl(control(), request(cmd[op]), buf);
    if (rc < 0) throw new DmIoctlError(op, o.name ?? '-', ...lastError());
    const flags = buf.readUInt32LE(28);
    if (flags & flag.bufferFull) {
      size *= 4;
      continue;
    }
    return {
      flags,
      eventNr: buf.readUInt32LE(32),
      openCount: buf.readInt32LE(24),
      targetCount: buf.readUInt32LE(20),
      dev: decodeDev(buf.readBigUInt64LE(40)),
      buf,
      dataStart: buf.readUInt32LE(16),
      dataSize: buf.readUInt32LE(12),
    };
  }
}

/** The kernel's dm interface version, e.g. "4.47.0". */
export function dmDriverVersion(): string {
  const r = call('version', {});
  return [0, 4, 8].map((o) => r.buf.readUInt32LE(o)).join('.');
}

export interface TargetLine {
  start: number;
  length: number;
  type: string;
  params: string;
}

/** Parses "start length type params" — the table format dmsetup takes and prints. */
function parseTargetLine(line: string): TargetLine {
  const m = /^(\d+) (\d+) (\S+)(?: (.*))?$/.exec(line.trim());
  if (m === null) throw new InternalError(`not a device-mapper table line: ${line}`);
  return { start: Number(m[1]), length: Number(m[2]), type: m[3]!, params: m[4] ?? '' };
}

function specs(targets: TargetLine[]): Buffer {
  const parts: Buffer[] = [];
  for (const t of targets) {
    const params = Buffer.from(`${t.params}\0`, 'utf8');
    const len = Math.ceil((specSize + params.length) / 8) * 8;
    const b = Buffer.alloc(len);
    b.writeBigUInt64LE(BigInt(t.start), 0);
    b.writeBigUInt64LE(BigInt(t.length), 8);
    b.writeUInt32LE(len, 20); // next: from this spec to the following one
    if (t.type.length >= 16) throw new InternalError(`dm target type too long: ${t.type}`);
    b.write(t.type, 24, 'latin1');
    params.copy(b, specSize);
    parts.push(b);
  }
  return Buffer.concat(parts);
}

/** Creates a device with no table; its number comes back. */
export function devCreate(name: string): { major: number; minor: number } {
  return call('devCreate', { name }).dev;
}

/** Loads a table into the device's inactive slot; a resume makes it live. */
export function tableLoad(name: string, table: string, o: { readOnly?: boolean } = {}): void {
  const targets = table
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map(parseTargetLine);
  call('tableLoad', {
    name,
    flags: o.readOnly === true ? flag.readOnly : 0,
    data: specs(targets),
    targetCount: targets.length,
  });
}

export function devResume(name: string): void {
  call('devSuspend', { name });
}

export function devSuspend(name: string): void {
  call('devSuspend', { name, flags: flag.suspend });
}

export function devRemove(name: string): void {
  call('devRemove', { name });
}

/** A target message (`dmsetup message NAME 0 TEXT`). */
export function targetMessage(name: string, message: string): void {
  const text = Buffer.from(`${message}\0`, 'utf8');
  const data = Buffer.alloc(8 + text.length); // struct dm_target_msg { u64 sector; char message[]; }
  text.copy(data, 8);
  call('targetMsg', { name, data });
}

export interface DevStatus {
  major: number;
  minor: number;
  openCount: number;
  eventNr: number;
  suspended: boolean;
  live: boolean;
}

export function devStatus(name: string): DevStatus {
  const r = call('devStatus', { name });
  return {
    ...r.dev,
    openCount: r.openCount,
    eventNr: r.eventNr,
    suspended: (r.flags & flag.suspend) !== 0,
    live: (r.flags & flag.activePresent) !== 0,
  };
}

/** `dmsetup status` (or `table`, with `table: true`): one "start length type params" line per target. */
export function tableStatus(name: string, o: { table?: boolean } = {}): string {
  const r = call('tableStatus', {
    name,
    flags: o.table === true ? flag.statusTable : 0,
    outSize: 16384,
  });
  const lines: string[] = [];
  let off = r.dataStart;
  for (let i = 0; i < r.targetCount; i++) {
    const start = r.buf.readBigUInt64LE(off);
    const length = r.buf.readBigUInt64LE(off + 8);
    const type = cString(r.buf, off + 24, off + specSize);
    const params = cString(r.buf, off + specSize, r.buf.length);
    lines.push(`${start} ${length} ${type}${params === '' ? '' : ` ${params}`}`);
    off = r.dataStart + r.buf.readUInt32LE(off + 20);
  }
  return lines.join('\n');
}

/** Every dm device: its name and number. */
export function listDevices(): { name: string; major: number; minor: number }[] {
  const r = call('listDevices', { outSize: 65536 });
  const out: { name: string; major: number; minor: number }[] = [];
  let off = r.dataStart;
  // An empty list is one zeroed entry (dev 0, next 0, no name).
  for (;;) {
    const dev = r.buf.readBigUInt64LE(off);
    const next = r.buf.readUInt32LE(off + 8);
    const name = cString(r.buf, off + 12, r.buf.length);
    if (dev === 0n && name === '') break;
    out.push({ name, ...decodeDev(dev) });
    if (next === 0) break;
    off += next;
  }
  return out;
}

function cString(buf: Buffer, from: number, to: number): string {
  const end = buf.indexOf(0, from);
  return buf.toString('utf8', from, end === -1 || end > to ? to : end);
}

/** A device number as glibc's makedev (and stat's rdev) has it. */
export function makedev(dev: { major: number; minor: number }): bigint {
  const M = BigInt(dev.major);
  const m = BigInt(dev.minor);
  return ((M & 0xfffn) << 8n) | ((M & ~0xfffn) << 32n) | (m & 0xffn) | ((m & ~0xffn) << 12n);
}

/**
 * Makes a block device node (mknod), as libdevmapper does when no udev runs.
 * False when this libc has no `mknod` symbol (glibc before 2.33).
 */
export function makeBlockNode(path: string, dev: { major: number; minor: number }): boolean {
  const { fns } = loadFfi();
  if (fns.mknod === null) return false;
  const S_IFBLK = 0o060000;
  if (fns.mknod(path, S_IFBLK | 0o600, makedev(dev)) < 0) {
    const [errno, text] = lastError();
    if (errno === 'EEXIST') return true;
    throw new EnvironmentError(
      'DM_UNAVAILABLE',
      `mknod ${path}: ${text}`,
      'device nodes need a writable /dev (devtmpfs)',
    );
  }
  return true;
}
