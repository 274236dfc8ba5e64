/**
 * Host-agent configuration: command-line flags win over the environment,
 * which wins over the host's settings file (/etc/thinrelay/agent.env), which
 * wins over defaults. S3 settings are the AWS SDK's own (credentials chain,
 * AWS_REGION, AWS_ENDPOINT_URL_S3) and are not repeated here.
 */
import { hostGroupPolicy, hostTrustPolicy } from './trust/host-policy.js';
import type { TrustPolicy } from './trust/policy.js';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { UsageError, errorMessage } from './errors.js';
import { defaultLimits, type ImageLimits } from './limits.js';
import type { BackendName } from './storage/backend.js';
import { isBlockSectors, isDmName } from './storage/devmapper/device-mapper.js';
import {
  poolOverridesFromEnv,
  readGroupPolicy,
  resolvePoolPolicy,
  type PoolPolicy,
  type PoolPolicyOverrides,
} from './pool/policy.js';

/** A free-space floor: a share of the pool, or an absolute number of bytes. */
export type SpaceFloor = { percent: number } | { bytes: number };

export interface DevmapperConfig {
  /** An existing pool to attach to by name; null = the pool `pool create` makes under the state dir. */
  pool: string | null;
  /** Data block size in 512-byte sectors. */
  blockSectors: number;
  /** Low water mark in sectors. */
  lowWaterSectors: number;
  skipBlockZeroing: boolean;
  /** New unpacks are refused when they would take the pool below these. */
  minFreeData: SpaceFloor;
  minFreeMetadata: SpaceFloor;
}

/** How an object is fetched: parallel ranged GETs of this size, this many at a time. */
export interface DownloadConfig {
  partSizeBytes: number;
  concurrency: number;
}

/**
 * Ranged-GET defaults, in the range the AWS CLI (8 MiB × 10) and the CRT
 * client (8 MiB parts) use; memory held ahead of the unpacker is at most
 * part size × concurrency (64 MiB).
 */
export const DEFAULT_DOWNLOAD_PART_BYTES = 8 * 1024 ** 2;
export const DEFAULT_DOWNLOAD_CONCURRENCY = 8;
const MIN_DOWNLOAD_PART_BYTES = 64 * 1024;
const MAX_DOWNLOAD_PART_BYTES = 1024 ** 3;
const MAX_DOWNLOAD_CONCURRENCY = 64;

export interface AgentConfig {
  stateDir: string;
  bucket: string | null;
  backend: BackendName;
  limits: ImageLimits;
  /** Host free space to keep untouched, in bytes. */
  reserveBytes: number;
  /** Failures for want of space (LOW_SPACE, STATE_FULL) before an image is recorded failed, not retried. */
  spaceAttempts: number;
  /** Virtual size of a new volume; null = derived from the blob size. */
  volumeSizeBytes: number | null;
  download: DownloadConfig;
  dm: DevmapperConfig;
  /**
   * Retention, watermarks and pins in force. A group agent replaces it once
   * it has read its group's settings (fleet/fleet-member.ts).
   */
  pool: PoolPolicy;
  /** The pool settings this host's environment gives (they win over the group's). */
  poolOverrides: PoolPolicyOverrides;
  /**
   * The signature policy in force (trust/host-policy.ts): the group's or the
   * standalone file's, narrowed by this host's override. A group agent
   * replaces it each time it reads its group's settings.
   */
  signatures: TrustPolicy;
}

export interface ConfigFlags {
  stateDir?: string | undefined;
  bucket?: string | undefined;
  backend?: string | undefined;
}

export const defaultStateDir = '/var/lib/thinrelay';

/** The host's settings file: the systemd unit's EnvironmentFile, read by the CLI too. */
export const defaultSettingsFile = '/etc/thinrelay/agent.env';

/**
 * Parses an EnvironmentFile as systemd does for the simple cases we write:
 * KEY=VALUE lines, # or ; comments, optional single or double quotes,
 * an optional leading `export `.
 */
export function parseEnvFile(text: string, file: string): Record<string, string> {
  const out: Record<string, string> = {};
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (m === null)
      throw new UsageError('CONFIG', `${file}:${i + 1}: expected KEY=VALUE, got "${line}"`);
    let value = m[2]!;
    const q = value[0];
    if ((q === '"' || q === "'") && value.length >= 2 && value.endsWith(q)) {
      value = value.slice(1, -1);
      if (q === '"') value = value.replace(/\\(["\\$`])/g, '$1');
    }
    out[m[1]!] = value;
  });
  return out;
}

/**
 * Fills `env` from the settings file for every variable not already set, so
 * flags and the environment still win. The default file may be absent (a
 * workstation); a file named by THINRELAY_CONFIG_FILE or --config must exist.
 * Returns the file read, or null.
 */
export function applySettingsFile(
  env: NodeJS.ProcessEnv,
  explicit: string | undefined,
): string | null {
  const file = explicit ?? env.THINRELAY_CONFIG_FILE ?? defaultSettingsFile;
  const required = explicit !== undefined || env.THINRELAY_CONFIG_FILE !== undefined;
  if (file === '' || file === 'none') return null;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!required && (code === 'ENOENT' || code === 'EACCES')) return null;
    throw new UsageError(
      'CONFIG',
      `cannot read the settings file ${file}: ${errorMessage(err)}`,
      'check --config / THINRELAY_CONFIG_FILE',
    );
  }
  for (const [k, v] of Object.entries(parseEnvFile(text, file))) env[k] ??= v;
  return file;
}

const units: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** "1048576", "512M", "4G", "4GiB" → bytes. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  const unit = m?.[2]?.toLowerCase() ?? '';
  if (m === null || units[unit] === undefined) {
    throw new UsageError('CONFIG', `${what} must be a size like 512M or 4G, got "${text}"`);
  }
  return Number(m[1]) * units[unit];
}

function parseCount(text: string, what: string): number {
  if (!/^\d+$/.test(text.trim())) {
    throw new UsageError('CONFIG', `${what} must be a whole number, got "${text}"`);
  }
  return Number(text);
}

/** "10%" or a size. */
function parseFloor(text: string, what: string): SpaceFloor {
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(text.trim());
  if (pct !== null) {
    const percent = Number(pct[1]);
    if (percent > 100)
      throw new UsageError('CONFIG', `${what} must be at most 100%, got "${text}"`);
    return { percent };
  }
  return { bytes: parseSize(text, what) };
}

function parseFlag(text: string, what: string): boolean {
  if (/^(1|true|yes|on)$/i.test(text)) return true;
  if (/^(0|false|no|off|)$/i.test(text)) return false;
  throw new UsageError('CONFIG', `${what} must be 1 or 0, got "${text}"`);
}

function parseBlockSectors(text: string): number {
  const n = parseCount(text, 'THINRELAY_DM_BLOCK_SECTORS');
  if (!isBlockSectors(n))
    throw new UsageError(
      'CONFIG',
      `THINRELAY_DM_BLOCK_SECTORS must be a multiple of 128 between 128 and 2097152, got ${n}`,
    );
  return n;
}

/** An attached pool's name reaches dmsetup: a device-mapper name, never an option. */
function parseDmPool(text: string): string {
  if (!isDmName(text))
    throw new UsageError(
      'CONFIG',
      `THINRELAY_DM_POOL ${JSON.stringify(text)} is not a device-mapper name`,
      "the pool's name as `dmsetup ls` shows it (e.g. vg0-thinpool for an LVM thin pool): letters, digits and _ . + -, not starting with -, at most 127 characters",
    );
  return text;
}

function parseDownload(env: NodeJS.ProcessEnv): DownloadConfig {
  const part = env.THINRELAY_DOWNLOAD_PART_SIZE;
  const partSizeBytes =
    part === undefined || part === ''
      ? DEFAULT_DOWNLOAD_PART_BYTES
      : parseSize(part, 'THINRELAY_DOWNLOAD_PART_SIZE');
  if (partSizeBytes < MIN_DOWNLOAD_PART_BYTES || partSizeBytes > MAX_DOWNLOAD_PART_BYTES) {
    throw new UsageError(
      'CONFIG',
      `THINRELAY_DOWNLOAD_PART_SIZE must be between 64K and 1G, got "${part}"`,
    );
  }
  const conc = env.THINRELAY_DOWNLOAD_CONCURRENCY;
  const concurrency =
    conc === undefined || conc === ''
      ? DEFAULT_DOWNLOAD_CONCURRENCY
      : parseCount(conc, 'THINRELAY_DOWNLOAD_CONCURRENCY');
  if (concurrency < 1 || concurrency > MAX_DOWNLOAD_CONCURRENCY) {
    throw new UsageError(
      'CONFIG',
      `THINRELAY_DOWNLOAD_CONCURRENCY must be between 1 and ${MAX_DOWNLOAD_CONCURRENCY}, got "${conc}"`,
      '1 fetches each object as one stream',
    );
  }
  return { partSizeBytes, concurrency };
}

function parseBackend(text: string): BackendName {
  if (text === 'loop' || text === 'devmapper') return text;
  throw new UsageError('CONFIG', `unknown backend "${text}"`, 'use --backend loop or devmapper');
}

export function loadConfig(flags: ConfigFlags, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const size = (name: string, fallback: number): number =>
    env[name] === undefined ? fallback : parseSize(env[name], name);
  const count = (name: string, fallback: number): number =>
    env[name] === undefined ? fallback : parseCount(env[name], name);
  const volume = env.THINRELAY_VOLUME_SIZE;
  const poolOverrides = poolOverridesFromEnv(env);
  // Absolute once, here: mount tables, /proc and losetup report absolute
  // paths, so a relative one never matches them (a volume mounted under
  // st/rel/mnt was not seen as mounted and its rmdir failed EBUSY).
  const stateDir = resolve(flags.stateDir ?? env.THINRELAY_STATE_DIR ?? defaultStateDir);
  return {
    pool: resolvePoolPolicy(poolOverrides, readGroupPolicy(stateDir)),
    poolOverrides,
    signatures: hostTrustPolicy(hostGroupPolicy(stateDir, env), env),
    stateDir,
    bucket: flags.bucket ?? env.THINRELAY_BUCKET ?? null,
    backend: parseBackend(flags.backend ?? env.THINRELAY_BACKEND ?? 'loop'),
    limits: {
      maxBlobBytes: size('THINRELAY_MAX_BLOB_BYTES', defaultLimits.maxBlobBytes),
      maxUnpackedBytes: size('THINRELAY_MAX_UNPACKED_BYTES', defaultLimits.maxUnpackedBytes),
      maxEntries: count('THINRELAY_MAX_ENTRIES', defaultLimits.maxEntries),
      maxPathLength: count('THINRELAY_MAX_PATH_LENGTH', defaultLimits.maxPathLength),
      maxPathDepth: count('THINRELAY_MAX_PATH_DEPTH', defaultLimits.maxPathDepth),
      maxLayers: count('THINRELAY_MAX_LAYERS', defaultLimits.maxLayers),
      maxChainBytes: size('THINRELAY_MAX_CHAIN_BYTES', defaultLimits.maxChainBytes),
      maxSpoolBytes: size('THINRELAY_MAX_SPOOL_BYTES', defaultLimits.maxSpoolBytes),
    },
    reserveBytes: size('THINRELAY_RESERVE_BYTES', 1024 ** 3),
    spaceAttempts: Math.max(1, count('THINRELAY_SPACE_ATTEMPTS', 8)),
    volumeSizeBytes: volume === undefined ? null : parseSize(volume, 'THINRELAY_VOLUME_SIZE'),
    download: parseDownload(env),
    dm: {
      pool:
        env.THINRELAY_DM_POOL === undefined || env.THINRELAY_DM_POOL === ''
          ? null
          : parseDmPool(env.THINRELAY_DM_POOL),
      blockSectors:
        env.THINRELAY_DM_BLOCK_SECTORS === undefined
          ? 256
          : parseBlockSectors(env.THINRELAY_DM_BLOCK_SECTORS),
      lowWaterSectors: count('THINRELAY_DM_LOW_WATER_SECTORS', 65536),
      skipBlockZeroing:
        env.THINRELAY_DM_SKIP_BLOCK_ZEROING !== undefined &&
        parseFlag(env.THINRELAY_DM_SKIP_BLOCK_ZEROING, 'THINRELAY_DM_SKIP_BLOCK_ZEROING'),
      minFreeData: parseFloor(
        env.THINRELAY_POOL_MIN_FREE_DATA ?? '10%',
        'THINRELAY_POOL_MIN_FREE_DATA',
      ),
      minFreeMetadata: parseFloor(
        env.THINRELAY_POOL_MIN_FREE_METADATA ?? '10%',
        'THINRELAY_POOL_MIN_FREE_METADATA',
      ),
    },
  };
}

/**
 * Virtual size of a new volume. A plain tar unpacks to about its own size and
 * a gzip rootfs to 3-4x; the backing is sparse (or thin), so headroom costs
 * nothing until written. Capped by the unpacked-bytes limit plus filesystem overhead.
 */
export function volumeSizeFor(blobBytes: number, config: AgentConfig): number {
  if (config.volumeSizeBytes !== null) return config.volumeSizeBytes;
  const mib = 1024 ** 2;
  const wanted = Math.max(1024 * mib, 4 * blobBytes + 256 * mib);
  const cap = Math.ceil((config.limits.maxUnpackedBytes * 1.1) / mib) * mib + 256 * mib;
  return Math.ceil(Math.min(wanted, cap) / mib) * mib;
}

/**
 * What an object read whole (streamed, or spooled when compressed as a whole)
 * may write to the pool before its content is known: an uncompressed tar
 * about its own size, anything compressed up to 4 ×; never more than its
 * volume.
 */
export function unpackedEstimate(
  objectBytes: number,
  config: AgentConfig,
  opts: { uncompressedTar: boolean },
): number {
  return Math.min(volumeSizeFor(objectBytes, config), tarBytesEstimate(objectBytes, opts));
}

/** What a tar (or a layer) unpacks to at most: its own size, or 4 × when compressed. */
export function tarBytesEstimate(blobBytes: number, opts: { uncompressedTar: boolean }): number {
  return (opts.uncompressedTar ? 1 : 4) * blobBytes;
}
