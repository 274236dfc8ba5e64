/**
 * Thin pools thinrelay creates itself: from two sparse files on loop devices
 * (dev/test) or from two given block devices (production). What was created
 * is written to <state-dir>/dm/pool.json, so after a reboot (loop devices
 * and dm tables gone, files and disks kept) the same table is loaded again
 * over the existing metadata — which is never zeroed twice.
 * Pools created by LVM or by hand are attached by name and never touched here.
 */
import {
  closeSync,
  constants,
  existsSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
} from 'node:fs';
import { join } from 'node:path';
import { EnvironmentError, UsageError, errorMessage } from '../../errors.js';
import { writeFileDurably } from '../../sys/durable-write.js';
import { run, runSync } from '../../sys/exec.js';
import {
  checkDmName,
  dmCreateSync,
  dmEnsureNodeSync,
  dmInfoSync,
  dmRemove,
  isBlockSectors,
  isDmName,
  isPoolFeature,
  thinPoolTable,
  type DevNumber,
} from './device-mapper.js';

export interface PoolDefinition {
  version: 1;
  name: string;
  source: { kind: 'files' | 'devices'; data: string; metadata: string };
  dataSectors: number;
  blockSectors: number;
  lowWaterBlocks: number;
  features: string[];
}

export interface PoolParams {
  name: string;
  /** 256 sectors = 128 KiB: small blocks keep snapshots of unpacked trees cheap. */
  blockSectors: number;
  /** Low water mark in sectors (the kernel takes blocks; converted here). */
  lowWaterSectors: number;
  skipBlockZeroing: boolean;
}

export function definitionPath(dmDir: string): string {
  return join(dmDir, 'pool.json');
}

export function readDefinition(dmDir: string): PoolDefinition | null {
  const path = definitionPath(dmDir);
  if (!existsSync(path)) return null;
  let def: PoolDefinition;
  try {
    def = JSON.parse(readFileSync(path, 'utf8')) as PoolDefinition;
  } catch (err) {
    throw badDefinition(path, errorMessage(err));
  }
  const problem = definitionProblem(def);
  if (problem !== undefined) throw badDefinition(path, problem);
  return def;
}

/** What makes a parsed pool.json unusable (the file is ours, but disks and hands change files). */
function definitionProblem(def: Partial<PoolDefinition> | null): string | undefined {
  if (typeof def !== 'object' || def === null) return 'not a JSON object';
  if (typeof def.name !== 'string' || !isDmName(def.name)) return 'no valid pool name';
  if (typeof def.blockSectors !== 'number' || !isBlockSectors(def.blockSectors))
    return `block size ${String(def.blockSectors)} is not a multiple of 128 sectors`;
  if (!Array.isArray(def.features) || !def.features.every((f) => isPoolFeature(String(f))))
    return `unknown pool features ${JSON.stringify(def.features)}`;
  return undefined;
}

function badDefinition(path: string, problem: string): EnvironmentError {
  return new EnvironmentError(
    'POOL_UNAVAILABLE',
    `${path} is not a pool definition thinrelay can use: ${problem}`,
    '`thinrelay pool create` wrote it and every start loads the pool from it: restore it from a backup of the state dir',
  );
}

/**
 * Metadata size: 64 bytes per data block (LVM's estimate) doubled for the
 * sharing snapshots add, at least 8 MiB, at most the kernel's ~16 GiB.
 */
export function metadataBytesFor(dataBytes: number, blockSectors: number): number {
  const blocks = Math.ceil(dataBytes / (blockSectors * 512));
  const mib = 1024 ** 2;
  const bytes = Math.max(8 * mib, blocks * 64 * 2);
  return Math.min(16 * 1024 * mib, Math.ceil(bytes / mib) * mib);
}

function makeSparseFile(path: string, size: number): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    ftruncateSync(fd, size);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A fresh pool's metadata device must start with a zeroed superblock (the kernel formats it). */
function isBlank(device: string): boolean {
  const fd = openSync(device, constants.O_RDONLY);
  try {
    const buf = Buffer.alloc(4096);
    readSync(fd, buf, 0, buf.length, 0);
    return buf.every((b) => b === 0);
  } finally {
    closeSync(fd);
  }
}

function table(def: PoolDefinition, metadata: DevNumber, data: DevNumber): string {
  return thinPoolTable({
    sectors: def.dataSectors,
    metadata,
    data,
    blockSectors: def.blockSectors,
    lowWaterBlocks: def.lowWaterBlocks,
    features: def.features,
  });
}

function devNumberOfSync(blockDevice: string): DevNumber {
  const out = runSync('stat', ['-L', '-c', '%t:%T', '--', blockDevice]);
  const [maj, min] = out.trim().split(':');
  return { major: parseInt(maj!, 16), minor: parseInt(min!, 16) };
}

function loopsForSync(file: string): string[] {
  const out = runSync('losetup', ['--associated', file, '--noheadings', '--output', 'NAME']);
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => l.trim());
}

function attachSync(file: string): string {
  return loopsForSync(file)[0] ?? runSync('losetup', ['--find', '--show', '--', file]);
}

/** Whether the pool's dm device exists (synchronously, for use inside a store transaction). */
export function poolExistsSync(name: string): boolean {
  return dmInfoSync(checkDmName(name)) !== null;
}

/**
 * Load the pool table over the existing metadata (after a reboot). Runs
 * synchronously so the caller can hold the store's write lock: processes
 * starting together must not attach the files twice.
 */
export function bringUpSync(def: PoolDefinition): void {
  if (poolExistsSync(def.name)) return;
  let metadata = def.source.metadata;
  let data = def.source.data;
  if (def.source.kind === 'files') {
    for (const f of [metadata, data])
      if (!existsSync(f))
        throw new EnvironmentError(
          'POOL_UNAVAILABLE',
          `pool file ${f} is missing`,
          'restore it, or destroy and re-create the pool',
        );
    metadata = attachSync(def.source.metadata);
    data = attachSync(def.source.data);
  }
  dmCreateSync(def.name, table(def, devNumberOfSync(metadata), devNumberOfSync(data)));
  dmEnsureNodeSync(def.name);
}

export async function createPoolFrom(
  dmDir: string,
  params: PoolParams,
  src: { sizeBytes?: number | undefined; devices?: string[] | undefined },
): Promise<PoolDefinition> {
  if (existsSync(definitionPath(dmDir)))
    throw new UsageError(
      'IN_USE',
      `a pool is already defined in ${definitionPath(dmDir)}`,
      'use it, or `thinrelay pool destroy` first',
    );
  mkdirSync(dmDir, { recursive: true, mode: 0o700 });
  const features = [
    'error_if_no_space',
    ...(params.skipBlockZeroing ? ['skip_block_zeroing'] : []),
  ];
  const lowWaterBlocks = Math.max(1, Math.floor(params.lowWaterSectors / params.blockSectors));
  const align = (sectors: number): number =>
    Math.floor(sectors / params.blockSectors) * params.blockSectors;
  let def: PoolDefinition;
  const created: string[] = [];
  if (src.devices !== undefined && src.devices.length > 0) {
    const [data, metadata] = src.devices;
    if (data === undefined || metadata === undefined || src.devices.length !== 2)
      throw new UsageError('USAGE', '--devices takes DATA,METADATA (two block devices)');
    if (!isBlank(metadata))
      throw new UsageError(
        'IN_USE',
        `metadata device ${metadata} is not blank (its first 4 KiB are not zero)`,
        `if it holds nothing you need: dd if=/dev/zero of=${metadata} bs=4096 count=1`,
      );
    const sectors = Number(await run('blockdev', ['--getsz', data]));
    def = {
      version: 1,
      name: params.name,
      source: { kind: 'devices', data, metadata },
      dataSectors: align(sectors),
      blockSectors: params.blockSectors,
      lowWaterBlocks,
      features,
    };
  } else {
    const sizeBytes = src.sizeBytes ?? 20 * 1024 ** 3;
    const data = join(dmDir, 'data.img');
    const metadata = join(dmDir, 'metadata.img');
    makeSparseFile(data, sizeBytes);
    created.push(data);
    makeSparseFile(metadata, metadataBytesFor(sizeBytes, params.blockSectors));
    created.push(metadata);
    def = {
      version: 1,
      name: params.name,
      source: { kind: 'files', data, metadata },
      dataSectors: align(Math.floor(sizeBytes / 512)),
      blockSectors: params.blockSectors,
      lowWaterBlocks,
      features,
    };
  }
  if (def.dataSectors < params.blockSectors * 16)
    throw new UsageError('USAGE', 'the pool must hold at least 16 data blocks');
  try {
    await writeFileDurably(definitionPath(dmDir), JSON.stringify(def, null, 2) + '\n', {
      mode: 0o600,
    });
    bringUpSync(def);
  } catch (err) {
    try {
      await teardown(def);
    } catch (cleanupErr) {
      throw new EnvironmentError(
        'POOL_UNAVAILABLE',
        `creating pool ${def.name} failed (${errorMessage(err)}), and so did releasing it: ${errorMessage(cleanupErr)}`,
        `remove it by hand: dmsetup remove ${def.name}; losetup -d its loop devices`,
        { cause: err },
      );
    }
    rmSync(definitionPath(dmDir), { force: true });
    for (const f of created) rmSync(f, { force: true });
    throw err;
  }
  return def;
}

/** Remove the pool's table and detach its loop devices (files and definition stay). */
export async function teardown(def: PoolDefinition): Promise<void> {
  if (poolExistsSync(def.name)) await dmRemove(def.name);
  if (def.source.kind === 'files') {
    for (const f of [def.source.data, def.source.metadata])
      for (const dev of loopsForSync(f)) await run('losetup', ['--detach', dev]);
  }
}

export async function destroyDefinedPool(dmDir: string, def: PoolDefinition): Promise<void> {
  await teardown(def);
  rmSync(definitionPath(dmDir), { force: true });
  if (def.source.kind === 'files') {
    rmSync(def.source.data, { force: true });
    rmSync(def.source.metadata, { force: true });
  }
}
