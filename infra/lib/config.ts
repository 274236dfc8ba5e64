/**
 * The deployment's configuration (infra/hosts.json, or the file named by
 * `-c hostsFile=...`): the fleet's hosts and the knobs around them. Parsing is
 * strict: unknown keys, bad names and out-of-range numbers are InfraConfigErrors
 * naming the offending path, raised before any construct exists, so a typo
 * never deploys a half-right fleet.
 *
 * Also the one place that derives resource names from it: the fan-out Lambda
 * discovers host queues by name prefix and routes by the group fragment, so
 * the naming convention is a contract with lambda/src/fanout.ts.
 */
import { readFileSync } from 'node:fs';

export class InfraConfigError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
    this.name = 'InfraConfigError';
  }
}

export interface HostSpec {
  /** Letters, digits and '-'; unique in the fleet. */
  name: string;
  /** Letters, digits and '_' (the Lambda's ROUTES rule: '-' ends the group in a queue name). */
  group: string;
}

/** Who may assume a host's role. */
export type HostPrincipal =
  /** EC2 instances, through one instance profile per host. */
  | { type: 'ec2' }
  /** On-prem hosts with IAM Roles Anywhere: the certificate's CN must be the host name. */
  | { type: 'rolesAnywhere'; trustAnchorArn: string }
  /** Any IAM principal ARN (another account, an existing role); trusts every host role to it. */
  | { type: 'aws'; principalArn: string };

export interface ThinrelayConfig {
  stackName: string;
  /** Every queue, function and alarm name starts with it. */
  namePrefix: string;
  /** Images live under this key prefix (ends with '/'); host roles can read nothing else. */
  imagesPrefix: string;
  /** Keys must end with one of these to be published; empty = any. */
  imageSuffixes: string[];
  /** Key prefix → host groups (the Lambda's ROUTES); other keys go to every host. */
  routes: Record<string, string[]>;
  bucket: {
    /** null = a CloudFormation-generated name. */
    name: string | null;
    noncurrentVersionDays: number;
    accessLogDays: number;
  };
  queues: {
    maxReceiveCount: number;
    visibilityTimeoutSeconds: number;
    /** Must stay below the DLQs' 14 days: expiry counts from the original enqueue. */
    retentionDays: number;
  };
  fanout: {
    memoryMiB: number;
    timeoutSeconds: number;
    maxEventAgeSeconds: number;
    concurrency: number;
    discoveryTtlSeconds: number;
    logRetentionDays: number;
  };
  alarms: { email: string | null; topicArn: string | null };
  hostPrincipal: HostPrincipal;
  hosts: HostSpec[];
}

export const DLQ_RETENTION_DAYS = 14;
const MAX_QUEUE_NAME = 80;
/** The retention periods CloudWatch Logs accepts. */
const LOG_RETENTION_DAYS = [
  1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288,
  3653,
];

/** Reads and validates a config file; errors name the file. */
export function loadConfigFile(file: string): ThinrelayConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new InfraConfigError(file, `cannot read: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new InfraConfigError(file, `not JSON (${(err as Error).message})`);
  }
  try {
    return parseConfig(value);
  } catch (err) {
    if (err instanceof InfraConfigError) throw new InfraConfigError(file, err.message);
    throw err;
  }
}

export function parseConfig(value: unknown): ThinrelayConfig {
  const root = new Section(value, '$');
  const namePrefix = root.string(
    'namePrefix',
    'thinrelay',
    /^[A-Za-z0-9_-]{1,40}$/,
    'letters, digits, - and _ (at most 40)',
  );
  const imagesPrefix = root.string(
    'imagesPrefix',
    'images/',
    /^[^/].*\/$/,
    "a key prefix like 'images/' (no leading '/', ends with '/')",
  );
  const bucket = root.section('bucket');
  const queues = root.section('queues');
  const fanout = root.section('fanout');
  const alarms = root.section('alarms');
  const config: ThinrelayConfig = {
    stackName: root.string(
      'stackName',
      'Thinrelay',
      /^[A-Za-z][A-Za-z0-9-]{0,127}$/,
      'a CloudFormation stack name',
    ),
    namePrefix,
    imagesPrefix,
    imageSuffixes: root.stringList('imageSuffixes', ['.tar', '.tar.gz', '.tgz']),
    routes: parseRoutes(root, imagesPrefix),
    bucket: {
      name: bucket.optionalString(
        'name',
        /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/,
        'an S3 bucket name',
      ),
      noncurrentVersionDays: bucket.int('noncurrentVersionDays', 30, 1, 3650),
      accessLogDays: bucket.int('accessLogDays', 90, 1, 3650),
    },
    queues: {
      maxReceiveCount: queues.int('maxReceiveCount', 5, 1, 1000),
      visibilityTimeoutSeconds: queues.int('visibilityTimeoutSeconds', 300, 0, 43_200),
      retentionDays: queues.int('retentionDays', 4, 1, DLQ_RETENTION_DAYS - 1),
    },
    fanout: {
      memoryMiB: fanout.int('memoryMiB', 256, 128, 10_240),
      timeoutSeconds: fanout.int('timeoutSeconds', 60, 3, 900),
      // Maximum by default: an old event is harmless (consumers order by sequencer), a dropped one is a missing image.
      maxEventAgeSeconds: fanout.int('maxEventAgeSeconds', 21_600, 60, 21_600),
      concurrency: fanout.int('concurrency', 16, 1, 256),
      discoveryTtlSeconds: fanout.int('discoveryTtlSeconds', 60, 1, 3600),
      logRetentionDays: fanout.oneOf('logRetentionDays', 30, LOG_RETENTION_DAYS),
    },
    alarms: {
      email: alarms.optionalString('email', /^[^@\s]+@[^@\s]+$/, 'an e-mail address'),
      topicArn: alarms.optionalString(
        'topicArn',
        /^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]+$/,
        'an SNS topic ARN',
      ),
    },
    hostPrincipal: parsePrincipal(root),
    hosts: parseHosts(root),
  };
  root.done();
  bucket.done();
  queues.done();
  fanout.done();
  alarms.done();
  if (config.alarms.email !== null && config.alarms.topicArn !== null) {
    throw new InfraConfigError(
      '$.alarms',
      'give email (a topic is created) or topicArn (an existing topic), not both',
    );
  }
  checkNames(config);
  return config;
}

/** Derived names: the convention lambda/src/fanout.ts discovers and routes by. */
export const names = {
  /** HOST_QUEUE_PREFIX: every host queue's name, and only host queues', start with it. */
  hostQueuePrefix: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-host-`,
  hostQueue: (c: Pick<ThinrelayConfig, 'namePrefix'>, h: HostSpec) =>
    `${c.namePrefix}-host-${h.group}-${h.name}`,
  /** Deliberately not under the host prefix: discovery must never publish into a DLQ. */
  dlqPrefix: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-dlq-`,
  dlq: (c: Pick<ThinrelayConfig, 'namePrefix'>, h: HostSpec) =>
    `${c.namePrefix}-dlq-${h.group}-${h.name}`,
  failedEventsQueue: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-fanout-failed`,
  fanoutFunction: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-fanout`,
};

/**
 * A host's part of stack output keys. Output keys are alphanumeric only, so
 * 'web-01' becomes 'Web01'; parseConfig rejects hosts that would collide.
 */
export function hostOutputStem(host: string): string {
  return host
    .split('-')
    .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
    .join('');
}

function checkNames(config: ThinrelayConfig): void {
  const stems = new Map<string, string>();
  config.hosts.forEach((host, i) => {
    const at = `$.hosts[${i}]`;
    const stem = hostOutputStem(host.name).toLowerCase();
    const clash = stems.get(stem);
    if (clash !== undefined) {
      throw new InfraConfigError(
        `${at}.name`,
        clash === host.name
          ? `host ${JSON.stringify(host.name)} is listed twice`
          : `host ${JSON.stringify(host.name)} collides with ${JSON.stringify(clash)} (stack output keys drop '-' and case)`,
      );
    }
    stems.set(stem, host.name);
    for (const name of [names.hostQueue(config, host), names.dlq(config, host)]) {
      if (name.length > MAX_QUEUE_NAME) {
        throw new InfraConfigError(
          at,
          `queue name ${JSON.stringify(name)} is longer than SQS's ${MAX_QUEUE_NAME} characters; shorten the host, group or namePrefix`,
        );
      }
    }
  });
  const groups = new Set(config.hosts.map((h) => h.group));
  for (const [keyPrefix, routeGroups] of Object.entries(config.routes)) {
    for (const group of routeGroups) {
      if (!groups.has(group)) {
        // Such keys would reach no host at all: almost certainly a typo.
        throw new InfraConfigError(
          `$.routes[${JSON.stringify(keyPrefix)}]`,
          `group ${JSON.stringify(group)} has no hosts`,
        );
      }
    }
  }
}

function parseRoutes(root: Section, imagesPrefix: string): Record<string, string[]> {
  const raw = root.raw('routes');
  if (raw === undefined) return {};
  if (!isObject(raw))
    throw new InfraConfigError(
      '$.routes',
      'must be an object {"<key prefix>": "<group>" | ["<group>", ...]}',
    );
  const routes: Record<string, string[]> = {};
  for (const [keyPrefix, value] of Object.entries(raw)) {
    const at = `$.routes[${JSON.stringify(keyPrefix)}]`;
    if (!keyPrefix.startsWith(imagesPrefix)) {
      throw new InfraConfigError(
        at,
        `key prefix must start with imagesPrefix ${JSON.stringify(imagesPrefix)} (no other key is published)`,
      );
    }
    const groups: unknown[] = Array.isArray(value) ? value : [value];
    if (
      groups.length === 0 ||
      !groups.every((g): g is string => typeof g === 'string' && GROUP.test(g))
    ) {
      throw new InfraConfigError(
        at,
        'groups must be a non-empty list of names of letters, digits and _',
      );
    }
    routes[keyPrefix] = groups;
  }
  return routes;
}

function parsePrincipal(root: Section): HostPrincipal {
  const raw = root.raw('hostPrincipal');
  if (raw === undefined) return { type: 'ec2' };
  const p = new Section(raw, '$.hostPrincipal');
  const type = p.string(
    'type',
    'ec2',
    /^(ec2|rolesAnywhere|aws)$/,
    "one of 'ec2', 'rolesAnywhere', 'aws'",
  );
  let principal: HostPrincipal;
  if (type === 'rolesAnywhere') {
    const arn = p.optionalString(
      'trustAnchorArn',
      /^arn:aws[a-z-]*:rolesanywhere:[a-z0-9-]+:\d{12}:trust-anchor\/[0-9a-f-]+$/,
      'a Roles Anywhere trust anchor ARN',
    );
    if (arn === null)
      throw new InfraConfigError(
        '$.hostPrincipal.trustAnchorArn',
        "required when type is 'rolesAnywhere'",
      );
    principal = { type, trustAnchorArn: arn };
  } else if (type === 'aws') {
    const arn = p.optionalString(
      'principalArn',
      /^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+$/,
      'an IAM principal ARN',
    );
    if (arn === null)
      throw new InfraConfigError('$.hostPrincipal.principalArn', "required when type is 'aws'");
    principal = { type, principalArn: arn };
  } else {
    principal = { type: 'ec2' };
  }
  p.done();
  return principal;
}

const HOST = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/;
const GROUP = /^[A-Za-z0-9_]+$/;

function parseHosts(root: Section): HostSpec[] {
  const raw = root.raw('hosts');
  if (raw === undefined)
    throw new InfraConfigError(
      '$.hosts',
      'required: a list of {"name": ..., "group": ...} (may be empty)',
    );
  if (!Array.isArray(raw))
    throw new InfraConfigError('$.hosts', 'must be a list of {"name": ..., "group": ...}');
  return raw.map((item, i) => {
    const h = new Section(item, `$.hosts[${i}]`);
    const host: HostSpec = {
      name: h.string('name', null, HOST, "letters, digits and '-' (not at either end)"),
      group: h.string(
        'group',
        'default',
        GROUP,
        "letters, digits and '_' ('-' separates group from host in queue names)",
      ),
    };
    h.done();
    return host;
  });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** One JSON object being read: typed getters with defaults, then done() rejects leftovers. */
class Section {
  private readonly value: Record<string, unknown>;
  private readonly seen = new Set<string>();

  constructor(
    value: unknown,
    private readonly path: string,
  ) {
    if (value === undefined) value = {};
    if (!isObject(value)) throw new InfraConfigError(path, 'must be an object');
    this.value = value;
  }

  raw(key: string): unknown {
    this.seen.add(key);
    return this.value[key];
  }

  section(key: string): Section {
    return new Section(this.raw(key), `${this.path}.${key}`);
  }

  string(key: string, dflt: string | null, pattern: RegExp, what: string): string {
    const v = this.optionalString(key, pattern, what);
    if (v !== null) return v;
    if (dflt === null) throw new InfraConfigError(`${this.path}.${key}`, `required (${what})`);
    return dflt;
  }

  optionalString(key: string, pattern: RegExp, what: string): string | null {
    const v = this.raw(key);
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string' || !pattern.test(v)) {
      throw new InfraConfigError(
        `${this.path}.${key}`,
        `must be ${what}, got ${JSON.stringify(v)}`,
      );
    }
    return v;
  }

  stringList(key: string, dflt: string[]): string[] {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    if (
      !Array.isArray(v) ||
      !v.every((s): s is string => typeof s === 'string' && s !== '' && !s.includes(','))
    ) {
      throw new InfraConfigError(
        `${this.path}.${key}`,
        'must be a list of non-empty strings without commas',
      );
    }
    return v;
  }

  int(key: string, dflt: number, min: number, max: number): number {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      throw new InfraConfigError(
        `${this.path}.${key}`,
        `must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`,
      );
    }
    return v;
  }

  oneOf(key: string, dflt: number, allowed: readonly number[]): number {
    const v = this.raw(key);
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !allowed.includes(v)) {
      throw new InfraConfigError(
        `${this.path}.${key}`,
        `must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`,
      );
    }
    return v;
  }

  done(): void {
    const unknown = Object.keys(this.value).filter((k) => !this.seen.has(k) && !k.startsWith('$'));
    if (unknown.length > 0) {
      throw new InfraConfigError(
        this.path,
        `unknown key(s) ${unknown.map((k) => JSON.stringify(k)).join(', ')}`,
      );
    }
  }
}
