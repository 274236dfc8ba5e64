/**
 * The pool policy: how many versions of a key are kept, the watermarks that
 * start and stop eviction, and the keys pinned by configuration. Read from
 * THINRELAY_* variables (a host's agent.env), over the group's settings in
 * the deployment config, over the defaults. A group agent keeps its group's
 * settings in the state dir (group-pool.json), so every CLI command on the
 * host (process-image, pool status) applies the same policy as the agent.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileDurably } from '../sys/durable-write.js';
import type { GroupPoolSettings } from '../../../schema/fleet.js';
import { UsageError } from '../errors.js';

export interface PoolPolicy {
  /** false: no retention, no eviction (THINRELAY_POOL_POLICY=off). */
  enabled: boolean;
  /** Ready versions kept per key; older ones are retired when a newer one is ready. */
  retainVersions: number;
  /** Data use (percent of capacity) above which eviction starts, and below which it stops. */
  dataHighPercent: number;
  dataLowPercent: number;
  /** The same for dm thin-pool metadata (stricter: exhausted metadata is what breaks a pool). */
  metadataHighPercent: number;
  metadataLowPercent: number;
  /** The agent's eviction pass timer. */
  checkSeconds: number;
  /** Key patterns (globs) whose current version is never evicted: the host's and the group's. */
  pins: string[];
}

/** What a group sets in the deployment config (schema/fleet.ts); fields may be absent. */
export type PoolPolicySettings = Partial<GroupPoolSettings>;

/**
 * Data 85/80 as kubelet's image GC. Metadata 75/65: a thin pool whose
 * metadata fills stops (and may need thin_repair offline), while data use
 * drops as soon as devices are deleted; LVM suggests extending at 70 %,
 * dmeventd warns from 80 %, and the admission floor refuses work at 90 %.
 */
export const defaultPoolPolicy: PoolPolicy = {
  enabled: true,
  retainVersions: 2,
  dataHighPercent: 85,
  dataLowPercent: 80,
  metadataHighPercent: 75,
  metadataLowPercent: 65,
  checkSeconds: 60,
  pins: [],
};

/** What the host itself set (its environment); undefined fields come from the group or defaults. */
export type PoolPolicyOverrides = Partial<PoolPolicy>;

function percent(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*%?\s*$/.exec(text);
  const n = m === null ? NaN : Number(m[1]);
  if (!(n > 0 && n <= 100))
    throw new UsageError(
      'CONFIG',
      `${what} must be a percentage above 0 and at most 100, got "${text}"`,
    );
  return n;
}

function whole(text: string, what: string, min: number, max: number): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!(n >= min && n <= max))
    throw new UsageError(
      'CONFIG',
      `${what} must be a whole number from ${min} to ${max}, got "${text}"`,
    );
  return n;
}

/** Pins: comma- or space-separated keys or globs. */
export function parsePins(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((p) => p.trim())
    .filter((p) => p !== '');
}

/** The THINRELAY_* settings the environment gives (unset ones stay undefined). */
export function poolOverridesFromEnv(env: NodeJS.ProcessEnv): PoolPolicyOverrides {
  const set = (name: string): string | undefined =>
    env[name] === undefined || env[name] === '' ? undefined : env[name];
  const out: PoolPolicyOverrides = {};
  const policy = set('THINRELAY_POOL_POLICY');
  if (policy !== undefined) {
    if (!/^(on|off)$/i.test(policy))
      throw new UsageError('CONFIG', `THINRELAY_POOL_POLICY must be on or off, got "${policy}"`);
    out.enabled = policy.toLowerCase() === 'on';
  }
  const retain = set('THINRELAY_RETAIN_VERSIONS');
  if (retain !== undefined)
    out.retainVersions = whole(retain, 'THINRELAY_RETAIN_VERSIONS', 1, 1000);
  const pct: [keyof PoolPolicy, string][] = [
    ['dataHighPercent', 'THINRELAY_POOL_HIGH_WATERMARK'],
    ['dataLowPercent', 'THINRELAY_POOL_LOW_WATERMARK'],
    ['metadataHighPercent', 'THINRELAY_POOL_METADATA_HIGH_WATERMARK'],
    ['metadataLowPercent', 'THINRELAY_POOL_METADATA_LOW_WATERMARK'],
  ];
  for (const [field, name] of pct) {
    const v = set(name);
    if (v !== undefined) (out as Record<string, number>)[field] = percent(v, name);
  }
  const check = set('THINRELAY_POOL_CHECK_SECONDS');
  if (check !== undefined)
    out.checkSeconds = whole(check, 'THINRELAY_POOL_CHECK_SECONDS', 1, 86_400);
  const pins = set('THINRELAY_PINS');
  if (pins !== undefined) out.pins = parsePins(pins);
  return out;
}

/** The group's settings as policy fields (checked like the host's). */
function fromGroup(s: PoolPolicySettings | undefined): PoolPolicyOverrides {
  if (s === undefined) return {};
  const out: PoolPolicyOverrides = {};
  const num = (v: number | undefined, what: string, f: (t: string, w: string) => number) =>
    v === undefined ? undefined : f(String(v), `the group's pool.${what}`);
  const retain = num(s.retainVersions, 'retainVersions', (t, w) => whole(t, w, 1, 1000));
  if (retain !== undefined) out.retainVersions = retain;
  const pairs: [keyof PoolPolicySettings, keyof PoolPolicy][] = [
    ['highWatermarkPercent', 'dataHighPercent'],
    ['lowWatermarkPercent', 'dataLowPercent'],
    ['metadataHighWatermarkPercent', 'metadataHighPercent'],
    ['metadataLowWatermarkPercent', 'metadataLowPercent'],
  ];
  for (const [from, to] of pairs) {
    const v = num(s[from] as number | undefined, from, percent);
    if (v !== undefined) (out as Record<string, number>)[to] = v;
  }
  if (s.pins !== undefined) out.pins = [...s.pins];
  return out;
}

/**
 * The policy in force: the host's settings over the group's over the
 * defaults; pins are the union of both (a pin only ever keeps more).
 */
export function resolvePoolPolicy(
  host: PoolPolicyOverrides,
  group?: PoolPolicySettings,
): PoolPolicy {
  const g = fromGroup(group);
  const policy: PoolPolicy = {
    ...defaultPoolPolicy,
    ...g,
    ...host,
    pins: [...new Set([...(g.pins ?? []), ...(host.pins ?? [])])],
  };
  if (policy.dataLowPercent >= policy.dataHighPercent)
    throw new UsageError(
      'CONFIG',
      `the pool's low watermark (${policy.dataLowPercent}%) must be below its high watermark (${policy.dataHighPercent}%)`,
      'set THINRELAY_POOL_LOW_WATERMARK below THINRELAY_POOL_HIGH_WATERMARK',
    );
  if (policy.metadataLowPercent >= policy.metadataHighPercent)
    throw new UsageError(
      'CONFIG',
      `the pool's metadata low watermark (${policy.metadataLowPercent}%) must be below its high watermark (${policy.metadataHighPercent}%)`,
      'set THINRELAY_POOL_METADATA_LOW_WATERMARK below THINRELAY_POOL_METADATA_HIGH_WATERMARK',
    );
  return policy;
}

/** Where a group agent keeps its group's pool settings for the CLI. */
export function groupPolicyPath(stateDir: string): string {
  return join(stateDir, 'group-pool.json');
}

/** Written by the group agent each time it reads the deployment item (atomic rename). */
export async function writeGroupPolicy(
  stateDir: string,
  settings: PoolPolicySettings | undefined,
): Promise<void> {
  mkdirSync(stateDir, { recursive: true });
  await writeFileDurably(groupPolicyPath(stateDir), JSON.stringify(settings ?? {}) + '\n', {
    mode: 0o644,
  });
}

/** The group's settings as last written, or undefined (not a group host; unreadable). */
export function readGroupPolicy(stateDir: string): PoolPolicySettings | undefined {
  try {
    return JSON.parse(readFileSync(groupPolicyPath(stateDir), 'utf8')) as PoolPolicySettings;
  } catch {
    return undefined;
  }
}
