/**
 * The deployment's configuration (infra/deployment.json, or the file named by
 * `-c deploymentFile=...`): the fleet's host groups and the knobs around them.
 * Hosts are not listed: they register themselves (queues named from their
 * group and host id, schema/fleet.ts), so the stack has nothing per host.
 * Parsing is strict: unknown keys, bad names and out-of-range numbers are
 * InfraConfigErrors naming the offending path, raised before any construct
 * exists, so a typo never deploys a half-right fleet. A config in the old
 * per-host format gets a migration message with its groups written out.
 *
 * Also the one place that derives stack resource names from it; host queue
 * names come from schema/fleet.ts (the contract with the Lambdas and agents).
 */
import { readFileSync } from 'node:fs';
import {
  GROUP_NAME,
  queueNames,
  type GroupPoolSettings,
  type GroupQueueSettings,
} from '../../schema/fleet.js';
import {
  parseSignaturePolicy,
  SignaturePolicyError,
  type SignaturePolicy,
} from '../../schema/signature-policy.js';

export class InfraConfigError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
    this.name = 'InfraConfigError';
  }
}

/** Who may assume a group's role, and what names a host in IAM. */
export type GroupPrincipal =
  /** EC2 instances (launch templates, Auto Scaling groups) through the group's instance profile. */
  | { type: 'ec2' }
  /** On-prem hosts with IAM Roles Anywhere; a host's id is its certificate's subject CN. */
  | { type: 'rolesAnywhere'; trustAnchorArn: string }
  /**
   * An IAM principal (e.g. a credential broker's role) that assumes the group
   * role for a host, tagging the session `thinrelay-host=<host id>`.
   */
  | { type: 'aws'; principalArn: string };

export interface GroupSpec {
  /** Letters, digits and '_' ('-' ends the group inside a queue name). */
  name: string;
  principal: GroupPrincipal;
  /** The settings its agents create their queues with (the CONFIG item carries them). */
  queues: GroupQueueSettings;
  /** Its agents' pool policy: retention, watermarks, pins (the CONFIG item carries it). */
  pool: GroupPoolSettings;
  /** Which images its hosts may activate: the group's `signatures`, else the top-level one (docs/trust.md). */
  signatures: SignaturePolicy;
}

export interface ThinrelayConfig {
  stackName: string;
  /** Every queue, function, table and alarm name starts with it. */
  namePrefix: string;
  /** Images live under this key prefix (ends with '/'); host roles can read nothing else. */
  imagesPrefix: string;
  /** Keys must end with one of these to be published; empty = any. */
  imageSuffixes: string[];
  /** Key prefix → host groups (top-level `routes` and each group's `routes`); other keys go to every group. */
  routes: Record<string, string[]>;
  bucket: {
    /** null = a CloudFormation-generated name. */
    name: string | null;
    noncurrentVersionDays: number;
    accessLogDays: number;
  };
  fanout: {
    memoryMiB: number;
    timeoutSeconds: number;
    maxEventAgeSeconds: number;
    concurrency: number;
    discoveryTtlSeconds: number;
    logRetentionDays: number;
  };
  fleet: {
    /** A host not seen (heartbeat) for this long is stale. */
    staleAfterSeconds: number;
    /** A stale host is removed (queues, items) after this much more. */
    sweepAfterSeconds: number;
    /** How often the sweep Lambda runs. */
    sweepEveryMinutes: number;
    /** The rollout alarm fires when a rollout is unfinished for longer than this. */
    rolloutAlarmMinutes: number;
  };
  alarms: { email: string | null; topicArn: string | null };
  groups: GroupSpec[];
}

export const DLQ_RETENTION_DAYS = 14;
/** Each group adds a role, its policy and an instance profile, and two outputs: 50 keeps far from 500/200. */
export const MAX_GROUPS = 50;
const MAX_QUEUE_NAME = 80;
/** The longest host id schema/fleet.ts HOST_ID admits. */
const MAX_HOST_ID = 40;
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
  if (isObject(value) && ('hosts' in value || 'hostPrincipal' in value)) {
    throw migrationError(value);
  }
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
  const fleet = root.section('fleet');
  const alarms = root.section('alarms');
  const queueDefaults = parseQueueSettings(queues, DEFAULT_QUEUES);
  const poolDefaults = parsePoolSettings(root.section('pool'), DEFAULT_POOL);
  const signatureDefault = signaturePolicy(root.raw('signatures'), '$.signatures');
  const routes = parseRoutes(root, imagesPrefix);
  const groups = parseGroups(
    root,
    imagesPrefix,
    queueDefaults,
    poolDefaults,
    signatureDefault,
    routes,
  );
  const config: ThinrelayConfig = {
    stackName: root.string(
      'stackName',
      'Thinrelay',
      /^[A-Za-z][A-Za-z0-9-]{0,127}$/,
      'a CloudFormation stack name',
    ),
    namePrefix,
    imagesPrefix,
    // Empty: every object under the prefix goes to the hosts, which tell formats apart by content.
    imageSuffixes: root.stringList('imageSuffixes', []),
    routes,
    bucket: {
      name: bucket.optionalString(
        'name',
        /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/,
        'an S3 bucket name',
      ),
      noncurrentVersionDays: bucket.int('noncurrentVersionDays', 30, 1, 3650),
      accessLogDays: bucket.int('accessLogDays', 90, 1, 3650),
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
    fleet: {
      // Agents heartbeat every 60 s: 15 missed heartbeats.
      staleAfterSeconds: fleet.int('staleAfterSeconds', 900, 120, 30 * 86_400),
      sweepAfterSeconds: fleet.int('sweepAfterSeconds', 86_400, 0, 90 * 86_400),
      sweepEveryMinutes: fleet.int('sweepEveryMinutes', 5, 1, 60),
      rolloutAlarmMinutes: fleet.int('rolloutAlarmMinutes', 60, 5, 7 * 1440),
    },
    alarms: {
      email: alarms.optionalString('email', /^[^@\s]+@[^@\s]+$/, 'an e-mail address'),
      topicArn: alarms.optionalString(
        'topicArn',
        /^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]+$/,
        'an SNS topic ARN',
      ),
    },
    groups,
  };
  root.done();
  bucket.done();
  queues.done();
  fanout.done();
  fleet.done();
  alarms.done();
  if (config.alarms.email !== null && config.alarms.topicArn !== null) {
    throw new InfraConfigError(
      '$.alarms',
      'give email (a topic is created) or topicArn (an existing topic), not both',
    );
  }
  checkNames(config);
  checkSignatureSize(config);
  return config;
}

/** The one policy parser (schema/signature-policy.ts), its errors as this file's. */
function signaturePolicy(raw: unknown, path: string): SignaturePolicy | undefined {
  if (raw === undefined) return undefined;
  try {
    return parseSignaturePolicy(raw, path);
  } catch (err) {
    if (err instanceof SignaturePolicyError)
      throw new InfraConfigError(err.path, err.message.slice(err.path.length + 2));
    throw err;
  }
}

/** The CONFIG item carries every group's keys: DynamoDB items hold at most 400 KB. */
const MAX_SIGNATURE_POLICY_CHARS = 200_000;

function checkSignatureSize(config: ThinrelayConfig): void {
  const chars = config.groups.reduce((n, g) => n + JSON.stringify(g.signatures).length, 0);
  if (chars > MAX_SIGNATURE_POLICY_CHARS)
    throw new InfraConfigError(
      '$.groups',
      `the groups' signature policies take ${chars} characters, more than the ${MAX_SIGNATURE_POLICY_CHARS} the fleet table's config item has room for; share keys through the top-level "signatures"`,
    );
}

/** Stack resource names (host queue names: schema/fleet.ts queueNames). */
export const names = {
  failedEventsQueue: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-fanout-failed`,
  fanoutFunction: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-fanout`,
  sweepFunction: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-sweep`,
  fleetTable: (c: Pick<ThinrelayConfig, 'namePrefix'>) => `${c.namePrefix}-fleet`,
  /** Every host queue of a group: `<prefix>-host-<group>-` … */
  groupQueuePrefix: (c: Pick<ThinrelayConfig, 'namePrefix'>, group: string) =>
    queueNames.hostQueue(c.namePrefix, group, ''),
  /** … and every host DLQ of a group. */
  groupDlqPrefix: (c: Pick<ThinrelayConfig, 'namePrefix'>, group: string) =>
    queueNames.dlq(c.namePrefix, group, ''),
};

/**
 * A group's part of stack output keys. Output keys are alphanumeric only, so
 * 'gpu_a' becomes 'GpuA'; parseConfig rejects groups that would collide.
 */
export function groupOutputStem(group: string): string {
  return group
    .split('_')
    .map((part) => part.charAt(0).toUpperCase() + part.slice(1))
    .join('');
}

const DEFAULT_QUEUES: GroupQueueSettings = {
  maxReceiveCount: 5,
  visibilityTimeoutSeconds: 300,
  retentionDays: 4,
  dlqRetentionDays: DLQ_RETENTION_DAYS,
};

function parseQueueSettings(s: Section, dflt: GroupQueueSettings): GroupQueueSettings {
  const settings: GroupQueueSettings = {
    maxReceiveCount: s.int('maxReceiveCount', dflt.maxReceiveCount, 1, 1000),
    visibilityTimeoutSeconds: s.int(
      'visibilityTimeoutSeconds',
      dflt.visibilityTimeoutSeconds,
      0,
      43_200,
    ),
    // Below the DLQ's: a message's expiry counts from its original enqueue.
    retentionDays: s.int('retentionDays', dflt.retentionDays, 1, DLQ_RETENTION_DAYS - 1),
    dlqRetentionDays: DLQ_RETENTION_DAYS,
  };
  s.done();
  return settings;
}

/** As the agent's defaults (host-agent/src/pool/policy.ts). */
const DEFAULT_POOL: GroupPoolSettings = {
  retainVersions: 2,
  highWatermarkPercent: 85,
  lowWatermarkPercent: 80,
  metadataHighWatermarkPercent: 75,
  metadataLowWatermarkPercent: 65,
  pins: [],
};

function parsePoolSettings(s: Section, dflt: GroupPoolSettings): GroupPoolSettings {
  const settings: GroupPoolSettings = {
    retainVersions: s.int('retainVersions', dflt.retainVersions, 1, 1000),
    highWatermarkPercent: s.int('highWatermarkPercent', dflt.highWatermarkPercent, 2, 100),
    lowWatermarkPercent: s.int('lowWatermarkPercent', dflt.lowWatermarkPercent, 1, 99),
    metadataHighWatermarkPercent: s.int(
      'metadataHighWatermarkPercent',
      dflt.metadataHighWatermarkPercent,
      2,
      100,
    ),
    metadataLowWatermarkPercent: s.int(
      'metadataLowWatermarkPercent',
      dflt.metadataLowWatermarkPercent,
      1,
      99,
    ),
    pins: s.stringList('pins', dflt.pins),
  };
  if (settings.lowWatermarkPercent >= settings.highWatermarkPercent)
    throw new InfraConfigError(
      `${s.path}.lowWatermarkPercent`,
      'must be below highWatermarkPercent',
    );
  if (settings.metadataLowWatermarkPercent >= settings.metadataHighWatermarkPercent)
    throw new InfraConfigError(
      `${s.path}.metadataLowWatermarkPercent`,
      'must be below metadataHighWatermarkPercent',
    );
  s.done();
  return settings;
}

function checkNames(config: ThinrelayConfig): void {
  const stems = new Map<string, string>();
  config.groups.forEach((group, i) => {
    const at = `$.groups[${i}]`;
    const stem = groupOutputStem(group.name).toLowerCase();
    const clash = stems.get(stem);
    if (clash !== undefined) {
      throw new InfraConfigError(
        `${at}.name`,
        clash === group.name
          ? `group ${JSON.stringify(group.name)} is listed twice`
          : `group ${JSON.stringify(group.name)} collides with ${JSON.stringify(clash)} (stack output keys drop '_' and case)`,
      );
    }
    stems.set(stem, group.name);
    // The longest host id must still fit: SQS names are at most 80 characters.
    const longest = queueNames.hostQueue(config.namePrefix, group.name, 'h'.repeat(MAX_HOST_ID));
    if (longest.length > MAX_QUEUE_NAME) {
      throw new InfraConfigError(
        `${at}.name`,
        `queue names of this group (${JSON.stringify(names.groupQueuePrefix(config, group.name))} + a host id of up to ${MAX_HOST_ID}) ` +
          `would exceed SQS's ${MAX_QUEUE_NAME} characters; shorten the group or namePrefix`,
      );
    }
  });
  const groups = new Set(config.groups.map((g) => g.name));
  for (const [keyPrefix, routeGroups] of Object.entries(config.routes)) {
    for (const group of routeGroups) {
      if (!groups.has(group)) {
        // Such keys would reach no host at all: almost certainly a typo.
        throw new InfraConfigError(
          `$.routes[${JSON.stringify(keyPrefix)}]`,
          `no group ${JSON.stringify(group)} in $.groups`,
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
    checkRoutePrefix(keyPrefix, imagesPrefix, at);
    const groups: unknown[] = Array.isArray(value) ? value : [value];
    if (
      groups.length === 0 ||
      !groups.every((g): g is string => typeof g === 'string' && GROUP_NAME.test(g))
    ) {
      throw new InfraConfigError(
        at,
        'groups must be a non-empty list of names of letters, digits and _',
      );
    }
    routes[keyPrefix] = [...new Set(groups)];
  }
  return routes;
}

function checkRoutePrefix(keyPrefix: string, imagesPrefix: string, at: string): void {
  if (!keyPrefix.startsWith(imagesPrefix)) {
    throw new InfraConfigError(
      at,
      `key prefix must start with imagesPrefix ${JSON.stringify(imagesPrefix)} (no other key is published)`,
    );
  }
}

function parseGroups(
  root: Section,
  imagesPrefix: string,
  queueDefaults: GroupQueueSettings,
  poolDefaults: GroupPoolSettings,
  signatureDefault: SignaturePolicy | undefined,
  routes: Record<string, string[]>,
): GroupSpec[] {
  const raw = root.raw('groups');
  if (raw === undefined) {
    throw new InfraConfigError(
      '$.groups',
      'required: a list of {"name": ..., "principal": ..., "routes": [...]} (may be empty)',
    );
  }
  if (!Array.isArray(raw))
    throw new InfraConfigError('$.groups', 'must be a list of {"name": ...} objects');
  if (raw.length > MAX_GROUPS) {
    throw new InfraConfigError(
      '$.groups',
      `at most ${MAX_GROUPS} groups (a group holds any number of hosts), got ${raw.length}`,
    );
  }
  return raw.map((item, i) => {
    const at = `$.groups[${i}]`;
    const g = new Section(item, at);
    const name = g.string(
      'name',
      null,
      GROUP_NAME,
      "letters, digits and '_', at most 32 ('-' separates group from host in queue names)",
    );
    const groupRoutes = g.raw('routes');
    if (groupRoutes !== undefined) {
      if (
        !Array.isArray(groupRoutes) ||
        !groupRoutes.every((r): r is string => typeof r === 'string' && r !== '')
      ) {
        throw new InfraConfigError(`${at}.routes`, 'must be a list of key prefixes');
      }
      groupRoutes.forEach((prefix, j) => {
        checkRoutePrefix(prefix, imagesPrefix, `${at}.routes[${j}]`);
        routes[prefix] = [...new Set([...(routes[prefix] ?? []), name])];
      });
    }
    const spec: GroupSpec = {
      name,
      principal: parsePrincipal(g.raw('principal'), `${at}.principal`),
      queues: parseQueueSettings(g.section('queues'), queueDefaults),
      pool: parsePoolSettings(g.section('pool'), poolDefaults),
      signatures:
        signaturePolicy(g.raw('signatures'), `${at}.signatures`) ??
        signatureDefault ??
        parseSignaturePolicy(undefined, `${at}.signatures`),
    };
    g.done();
    return spec;
  });
}

function parsePrincipal(raw: unknown, path: string): GroupPrincipal {
  if (raw === undefined) return { type: 'ec2' };
  const p = new Section(raw, path);
  const type = p.string(
    'type',
    'ec2',
    /^(ec2|rolesAnywhere|aws)$/,
    "one of 'ec2', 'rolesAnywhere', 'aws'",
  );
  let principal: GroupPrincipal;
  if (type === 'rolesAnywhere') {
    const arn = p.optionalString(
      'trustAnchorArn',
      /^arn:aws[a-z-]*:rolesanywhere:[a-z0-9-]+:\d{12}:trust-anchor\/[0-9a-f-]+$/,
      'a Roles Anywhere trust anchor ARN',
    );
    if (arn === null)
      throw new InfraConfigError(`${path}.trustAnchorArn`, "required when type is 'rolesAnywhere'");
    principal = { type, trustAnchorArn: arn };
  } else if (type === 'aws') {
    const arn = p.optionalString(
      'principalArn',
      /^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+$/,
      'an IAM principal ARN',
    );
    if (arn === null)
      throw new InfraConfigError(`${path}.principalArn`, "required when type is 'aws'");
    principal = { type, principalArn: arn };
  } else {
    principal = { type: 'ec2' };
  }
  p.done();
  return principal;
}

/**
 * The old format listed every host (`hosts`, `hostPrincipal`). Hosts now
 * register themselves, so the list is not mapped silently: the error shows
 * the equivalent `groups` (the host names are no longer needed anywhere).
 */
function migrationError(value: Record<string, unknown>): InfraConfigError {
  const hosts = Array.isArray(value.hosts) ? (value.hosts as unknown[]) : [];
  const groupNames = [
    ...new Set(
      hosts.map((h) => (isObject(h) && typeof h.group === 'string' ? h.group : 'default')),
    ),
  ];
  const principal = isObject(value.hostPrincipal) ? value.hostPrincipal : undefined;
  const groups = groupNames.map((name) => ({ name, ...(principal ? { principal } : {}) }));
  return new InfraConfigError(
    '$.hosts',
    'the per-host config format is gone: hosts now register themselves in a group ' +
      '(`thinrelay agent --group G`), and the stack creates one role per group instead of ' +
      'resources per host. Replace "hosts" and "hostPrincipal" with ' +
      `"groups": ${JSON.stringify(groups)} ` +
      (isObject(principal) && principal.type === 'aws'
        ? '(an "aws" principal must now tag each session thinrelay-host=<host id>) '
        : '') +
      '(see infra/README.md, "Migrating from a hosts list")',
  );
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
    readonly path: string,
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
