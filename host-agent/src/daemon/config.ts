/**
 * The daemon's own settings: flags win over THINRELAY_* variables, which win
 * over defaults. (Store, backend and limits are the shared AgentConfig.)
 */
import { UsageError } from '../errors.js';
import { LONG_POLL_SECONDS } from '../queue/sqs-client.js';

export interface DaemonConfig {
  /** null: a group's agent (--group) registers its own queue (fleet/). */
  queueUrl: string | null;
  concurrency: number;
  /** host:port of the health/metrics endpoint; null = off. */
  metricsAddress: { host: string; port: number } | null;
  visibilitySeconds: number;
  waitSeconds: number;
  drainSeconds: number;
  transientAttempts: number;
  transientBaseDelayMs: number;
}

export interface DaemonFlags {
  queueUrl?: string | undefined;
  group?: string | undefined;
  concurrency?: string | undefined;
  metricsAddr?: string | undefined;
}

export function integer(
  text: string | undefined,
  what: string,
  dflt: number,
  min: number,
  max: number,
): number {
  if (text === undefined || text.trim() === '') return dflt;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(
      'CONFIG',
      `${what} must be a whole number from ${min} to ${max}, got "${text}"`,
    );
  }
  return n;
}

function parseAddress(text: string): DaemonConfig['metricsAddress'] {
  if (text === 'off') return null;
  const m = /^(.*):(\d+)$/.exec(text);
  const port = m === null ? NaN : Number(m[2]);
  if (m === null || m[1] === '' || port > 65535) {
    throw new UsageError(
      'CONFIG',
      `metrics address must be HOST:PORT or "off", got "${text}"`,
      'e.g. --metrics-addr 127.0.0.1:9464',
    );
  }
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port };
}

export function loadDaemonConfig(
  flags: DaemonFlags,
  env: NodeJS.ProcessEnv = process.env,
): DaemonConfig {
  const queueUrl = flags.queueUrl ?? env.THINRELAY_QUEUE_URL;
  const group = flags.group ?? env.THINRELAY_GROUP;
  if (group !== undefined && group !== '') {
    if (queueUrl !== undefined && queueUrl !== '') {
      throw new UsageError(
        'CONFIG',
        'both a queue URL and a group are given',
        "a group's agent registers its own queue: drop --queue-url / THINRELAY_QUEUE_URL, or --group / THINRELAY_GROUP",
      );
    }
    return { ...loadDaemonTuning(flags, env), queueUrl: null };
  }
  if (queueUrl === undefined || queueUrl === '') {
    throw new UsageError(
      'CONFIG',
      'no queue given',
      'pass --group G (THINRELAY_GROUP) to join a host group, or --queue-url (THINRELAY_QUEUE_URL) for a fixed queue',
    );
  }
  if (!/^https?:\/\/[^/]+\/[^/]+\/[^/]+$/.test(queueUrl)) {
    throw new UsageError(
      'CONFIG',
      `not an SQS queue URL: "${queueUrl}"`,
      'expected https://sqs.REGION.amazonaws.com/ACCOUNT/NAME',
    );
  }
  return { ...loadDaemonTuning(flags, env), queueUrl };
}

function loadDaemonTuning(
  flags: DaemonFlags,
  env: NodeJS.ProcessEnv,
): Omit<DaemonConfig, 'queueUrl'> {
  const visibilitySeconds = integer(
    env.THINRELAY_VISIBILITY_TIMEOUT,
    'THINRELAY_VISIBILITY_TIMEOUT',
    120,
    1,
    43_200,
  );
  return {
    concurrency: integer(flags.concurrency ?? env.THINRELAY_CONCURRENCY, '--concurrency', 2, 1, 64),
    metricsAddress: parseAddress(
      flags.metricsAddr ?? env.THINRELAY_METRICS_ADDR ?? '127.0.0.1:9464',
    ),
    visibilitySeconds,
    waitSeconds: integer(
      env.THINRELAY_WAIT_SECONDS,
      'THINRELAY_WAIT_SECONDS',
      LONG_POLL_SECONDS,
      0,
      LONG_POLL_SECONDS,
    ),
    drainSeconds: integer(env.THINRELAY_DRAIN_SECONDS, 'THINRELAY_DRAIN_SECONDS', 60, 0, 3600),
    transientAttempts: integer(
      env.THINRELAY_TRANSIENT_ATTEMPTS,
      'THINRELAY_TRANSIENT_ATTEMPTS',
      4,
      1,
      100,
    ),
    transientBaseDelayMs: integer(
      env.THINRELAY_TRANSIENT_DELAY_MS,
      'THINRELAY_TRANSIENT_DELAY_MS',
      2000,
      0,
      600_000,
    ),
  };
}
