/**
 * The fan-out Lambda's configuration, read from its environment. Every
 * problem is a ConfigError naming the variable, thrown before any message is
 * sent: a misconfigured function should fail every invocation identically
 * (and visibly) rather than publish to the wrong hosts.
 */

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

/** Keys under `keyPrefix` go only to the hosts of `groups`. */
export interface Route {
  keyPrefix: string;
  groups: string[];
}

export interface LambdaConfig {
  /** Host queues are the queues whose name starts with this (HOST_QUEUE_PREFIX). */
  queuePrefix: string;
  /** Fixed queue URLs (HOST_QUEUE_URLS); null = discover with ListQueues. */
  queueUrls: string[] | null;
  /** Longest key prefix first, so the most specific route wins. */
  routes: Route[];
  /** Only these buckets (IMAGE_BUCKETS, comma-separated); empty = any. */
  buckets: string[];
  imagePrefix: string;
  /** Empty = any suffix. */
  imageSuffixes: string[];
  fanoutConcurrency: number;
  /** How long a ListQueues discovery stays valid in a warm container. */
  discoveryTtlMs: number;
  /** The fleet table rollouts are recorded in (FLEET_TABLE); null = record nothing. */
  fleetTable: string | null;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): LambdaConfig {
  const queueUrls = list(env.HOST_QUEUE_URLS);
  for (const url of queueUrls) {
    if (!/^https?:\/\/[^/]+\/.+/.test(url)) {
      throw new ConfigError('HOST_QUEUE_URLS', `not a queue URL: ${JSON.stringify(url)}`);
    }
  }
  const routes = parseRoutes(env.ROUTES);
  const queuePrefix = (env.HOST_QUEUE_PREFIX ?? '').trim();
  // Discovery and routing both work on queue names, so both need the prefix.
  if (queuePrefix === '' && (queueUrls.length === 0 || routes.length > 0)) {
    throw new ConfigError(
      'HOST_QUEUE_PREFIX',
      'required (unless HOST_QUEUE_URLS is set and ROUTES is not)',
    );
  }
  if (queuePrefix !== '' && !/^[A-Za-z0-9_-]+$/.test(queuePrefix)) {
    throw new ConfigError('HOST_QUEUE_PREFIX', 'may only contain letters, digits, - and _');
  }
  return {
    queuePrefix,
    queueUrls: queueUrls.length > 0 ? queueUrls : null,
    routes,
    buckets: list(env.IMAGE_BUCKETS),
    imagePrefix: env.IMAGE_PREFIX ?? '',
    imageSuffixes: list(env.IMAGE_SUFFIXES),
    fanoutConcurrency: positiveInt(env, 'FANOUT_CONCURRENCY', 16, 256),
    discoveryTtlMs: positiveInt(env, 'QUEUE_DISCOVERY_TTL_SECONDS', 60, 3600) * 1000,
    fleetTable: tableName(env.FLEET_TABLE),
  };
}

/** ROUTES = {"images/gpu/": "gpu", "images/db/": ["db", "dbreplica"]} */
function parseRoutes(raw: string | undefined): Route[] {
  if (raw === undefined || raw.trim() === '') return [];
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch (err) {
    throw new ConfigError('ROUTES', `not JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ConfigError('ROUTES', 'must be a JSON object {"<key prefix>": "<group>" | [...]}');
  }
  const routes: Route[] = [];
  for (const [keyPrefix, g] of Object.entries(value)) {
    const groups: unknown[] = Array.isArray(g) ? g : [g];
    if (
      groups.length === 0 ||
      !groups.every((x): x is string => typeof x === 'string' && /^[A-Za-z0-9_]+$/.test(x))
    ) {
      // No "-" in group names: "-" ends the group fragment in a queue name.
      throw new ConfigError(
        'ROUTES',
        `route ${JSON.stringify(keyPrefix)}: groups must be non-empty names of letters, digits and _`,
      );
    }
    routes.push({ keyPrefix, groups });
  }
  return routes.sort((a, b) => b.keyPrefix.length - a.keyPrefix.length);
}

function tableName(raw: string | undefined): string | null {
  const name = (raw ?? '').trim();
  if (name === '') return null;
  if (!/^[A-Za-z0-9_.-]{3,255}$/.test(name)) {
    throw new ConfigError('FLEET_TABLE', `not a DynamoDB table name: ${JSON.stringify(name)}`);
  }
  return name;
}

function list(raw: string | undefined): string[] {
  return (raw ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function positiveInt(env: NodeJS.ProcessEnv, name: string, dflt: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    throw new ConfigError(name, `must be an integer from 1 to ${max}, got ${JSON.stringify(raw)}`);
  }
  return n;
}
