/**
 * Host-agent configuration: command-line flags win over THINRELAY_* variables,
 * which win over defaults. S3 settings are the AWS SDK's own (credentials
 * chain, AWS_REGION, AWS_ENDPOINT_URL_S3) and are not repeated here.
 */
import { UsageError } from './errors.js';
import { defaultLimits, type ImageLimits } from './limits.js';
import type { BackendName } from './storage/backend.js';

export interface AgentConfig {
  stateDir: string;
  bucket: string | null;
  backend: BackendName;
  limits: ImageLimits;
  /** Host free space to keep untouched, in bytes. */
  reserveBytes: number;
  /** Virtual size of a new volume; null = derived from the blob size. */
  volumeSizeBytes: number | null;
}

export interface ConfigFlags {
  stateDir?: string | undefined;
  bucket?: string | undefined;
  backend?: string | undefined;
}

export const defaultStateDir = '/var/lib/thinrelay';

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
  return {
    stateDir: flags.stateDir ?? env.THINRELAY_STATE_DIR ?? defaultStateDir,
    bucket: flags.bucket ?? env.THINRELAY_BUCKET ?? null,
    backend: parseBackend(flags.backend ?? env.THINRELAY_BACKEND ?? 'loop'),
    limits: {
      maxBlobBytes: size('THINRELAY_MAX_BLOB_BYTES', defaultLimits.maxBlobBytes),
      maxUnpackedBytes: size('THINRELAY_MAX_UNPACKED_BYTES', defaultLimits.maxUnpackedBytes),
      maxEntries: count('THINRELAY_MAX_ENTRIES', defaultLimits.maxEntries),
      maxPathLength: count('THINRELAY_MAX_PATH_LENGTH', defaultLimits.maxPathLength),
      maxPathDepth: count('THINRELAY_MAX_PATH_DEPTH', defaultLimits.maxPathDepth),
    },
    reserveBytes: size('THINRELAY_RESERVE_BYTES', 1024 ** 3),
    volumeSizeBytes: volume === undefined ? null : parseSize(volume, 'THINRELAY_VOLUME_SIZE'),
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
