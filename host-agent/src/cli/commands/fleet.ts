/**
 * thinrelay fleet status|hosts|wait|forget: the operator's view of the whole
 * fleet, read from the fleet table (THINRELAY_FLEET_TABLE). Nothing here
 * touches this host's state directory.
 *
 * The AWS SDK loads only when a fleet command runs (dynamic imports).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { DeploymentConfigItem, HostItem } from '../../../../schema/fleet.js';
import { ExitCode, FleetError, UsageError, isThinrelayError } from '../../errors.js';
import type { FleetReader } from '../../fleet/view/fleet-reader.js';
import type { ETagSource, ImageStatus, RolloutOutcome } from '../../fleet/view/fleet-view.js';
import type { Command, CommandContext } from '../command.js';
import { formatBytes, formatError, printJson, printTable, usageHint } from '../output.js';
import { unknownSubcommand } from '../help.js';

const USAGE = `thinrelay fleet status [KEY] [--json]
       thinrelay fleet hosts [--json]
       thinrelay fleet wait KEY [--etag ETAG] [--timeout 10m] [--interval 2s] [--json]
       thinrelay fleet forget HOST [--force] [--json]
  (--table NAME overrides THINRELAY_FLEET_TABLE)`;

async function openReader(ctx: CommandContext): Promise<FleetReader> {
  const { FleetReader, createDynamoClient, fleetTableName } =
    await import('../../fleet/view/fleet-reader.js');
  const table = fleetTableName(ctx.values.table as string | undefined, process.env);
  return new FleetReader(createDynamoClient(), table);
}

function keyArg(ctx: CommandContext, required: boolean): string | undefined {
  const key = ctx.positionals[1];
  if (key === undefined && required) {
    throw new UsageError('USAGE', `missing KEY (the image's S3 key)`, usageHint(USAGE));
  }
  if (ctx.positionals.length > 2) {
    throw new UsageError('USAGE', `unexpected argument "${ctx.positionals[2]}"`, usageHint(USAGE));
  }
  return key;
}

function checkRouted(key: string, groups: string[], config: DeploymentConfigItem): void {
  if (groups.length > 0) return;
  const suffixes =
    config.imageSuffixes.length === 0 ? 'any suffix' : config.imageSuffixes.join(', ');
  throw new FleetError(
    'KEY_NOT_ROUTED',
    `${key} is not an image key of this fleet: no host group receives it`,
    `image keys start with "${config.imagesPrefix}" and end with ${suffixes}`,
    { exitCode: ExitCode.usage },
  );
}

const short = (eTag: string | null): string => (eTag === null ? '-' : eTag.slice(0, 12));

function age(iso: string | null, now: number): string {
  if (iso === null) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 120
    ? `${s}s ago`
    : s < 7200
      ? `${Math.round(s / 60)}m ago`
      : `${Math.round(s / 3600)}h ago`;
}

function countsLine(s: ImageStatus): string {
  const c = s.counts;
  const extra = c.notLive > 0 ? `  (${c.notLive} not live, not counted)` : '';
  // Signature states only when a host is in one: most fleets have no policy.
  const awaiting = c.awaitingSignature > 0 ? `  awaiting-signature ${c.awaitingSignature}` : '';
  const untrusted = c.untrusted > 0 ? `  untrusted ${c.untrusted}` : '';
  return `ready ${c.ready}/${c.expected}  processing ${c.processing}  pending ${c.pending}${awaiting}  failed ${c.failed}${untrusted}${extra}`;
}

function printImageStatus(s: ImageStatus, now: number): void {
  process.stdout.write(
    `${s.key}  etag ${s.etag ?? '-'} (from ${s.etagSource})  groups ${s.groups.join(',')}\n` +
      `${countsLine(s)}  → ${s.outcome}\n\n`,
  );
  printTable(
    ['HOST', 'GROUP', 'STATE', 'REASON', 'SIGNER', 'ETAG', 'UPDATED', 'HOST STATE'],
    s.hosts.map((h) => [
      h.host,
      h.group,
      h.state,
      h.reason === null ? null : `[${h.reason}] ${h.message ?? ''}`,
      h.signer === null ? null : `${h.signer}, verified ${age(h.verifiedAt, now)}`,
      short(h.eTag),
      age(h.updatedAt, now),
      h.expected ? h.liveness : `${h.liveness} (not counted)`,
    ]),
  );
}

function statusJson(s: ImageStatus): object {
  return {
    key: s.key,
    etag: s.etag,
    etagSource: s.etagSource,
    groups: s.groups,
    outcome: s.outcome,
    hosts: s.hosts,
    counts: s.counts,
  };
}

// ---------------------------------------------------------------- status

async function status(ctx: CommandContext): Promise<number> {
  const key = keyArg(ctx, false);
  const reader = await openReader(ctx);
  const view = await import('../../fleet/view/fleet-view.js');
  const now = Date.now();
  try {
    if (key === undefined) {
      const statuses = view.allImageStatuses(await reader.snapshot(), now);
      if (ctx.json) {
        printJson({ images: statuses.map(statusJson) });
        return ExitCode.ok;
      }
      if (statuses.length === 0) {
        process.stdout.write('no images reported by any host yet\n');
        return ExitCode.ok;
      }
      // The signature columns only when a host is in such a state: most fleets have no policy.
      const signatures = statuses.some((s) => s.counts.awaitingSignature + s.counts.untrusted > 0);
      printTable(
        [
          'KEY',
          'ETAG',
          'READY',
          'PROCESSING',
          'PENDING',
          ...(signatures ? ['AWAITING SIGNATURE', 'UNTRUSTED'] : []),
          'FAILED',
          'OUTCOME',
        ],
        statuses.map((s) => [
          s.key,
          short(s.etag),
          `${s.counts.ready}/${s.counts.expected}`,
          s.counts.processing,
          s.counts.pending,
          ...(signatures ? [s.counts.awaitingSignature, s.counts.untrusted] : []),
          s.counts.failed,
          s.outcome,
        ]),
      );
      const listed = (state: string) =>
        statuses.flatMap((s) =>
          s.hosts.filter((h) => h.state === state).map((h) => ({ key: s.key, ...h })),
        );
      for (const [state, title] of [
        ['failed', 'failures'],
        ['untrusted', 'untrusted (no longer pass the signature policy)'],
        ['awaiting-signature', 'awaiting a signature'],
      ] as const) {
        const rows = listed(state);
        if (rows.length === 0) continue;
        process.stdout.write(`\n${title}:\n`);
        for (const f of rows)
          process.stdout.write(
            `  ${f.key} on ${f.host} (${f.group}): [${f.reason ?? '-'}] ${f.message ?? ''}\n`,
          );
      }
      const signed = statuses.flatMap((s) =>
        s.hosts.filter((h) => h.signer !== null).map((h) => ({ key: s.key, ...h })),
      );
      if (signed.length > 0) {
        process.stdout.write('\nsigners:\n');
        for (const f of signed)
          process.stdout.write(
            `  ${f.key} on ${f.host}: ${f.signer}, verified ${f.verifiedAt ?? '-'}\n`,
          );
      }
      return ExitCode.ok;
    }
    const config = await reader.config();
    checkRouted(key, view.routedGroups(key, config), config);
    const [hosts, items, rollout] = await Promise.all([
      reader.hosts(),
      reader.imageItems(key),
      reader.latestPutRollout(key),
    ]);
    const asked =
      typeof ctx.values.etag === 'string'
        ? { eTag: ctx.values.etag, source: 'flag' as const }
        : null;
    const s = view.imageStatus({ key, config, hosts, items, rollout, asked, now });
    if (ctx.json) printJson(statusJson(s));
    else printImageStatus(s, now);
    return ExitCode.ok;
  } finally {
    reader.client.destroy();
  }
}

// ---------------------------------------------------------------- hosts

async function hosts(ctx: CommandContext): Promise<number> {
  if (ctx.positionals.length > 1) {
    throw new UsageError('USAGE', `unexpected argument "${ctx.positionals[1]}"`, usageHint(USAGE));
  }
  const reader = await openReader(ctx);
  const { hostSummaries } = await import('../../fleet/view/fleet-view.js');
  try {
    const snap = await reader.snapshot();
    const now = Date.now();
    const rows = hostSummaries(snap.hosts, snap.images, snap.config, now);
    if (ctx.json) {
      printJson({
        hosts: rows,
        counts: {
          hosts: rows.length,
          live: rows.filter((r) => r.liveness === 'live').length,
          stale: rows.filter((r) => r.liveness === 'stale').length,
          gone: rows.filter((r) => r.liveness === 'gone').length,
        },
      });
      return ExitCode.ok;
    }
    if (rows.length === 0) {
      process.stdout.write('no hosts have registered\n');
      return ExitCode.ok;
    }
    const pct = (used: number, total: number): string =>
      total > 0 ? `${Math.round((100 * used) / total)}%` : '-';
    printTable(
      [
        'HOST',
        'GROUP',
        'STATE',
        'LAST SEEN',
        'READY',
        'FAILED',
        'POOL DATA',
        'POOL META',
        'DLQ',
        'AGENT',
      ],
      rows.map((r) => [
        r.host,
        r.group,
        r.liveness,
        age(r.lastSeenAt, now),
        r.ready,
        r.failed,
        r.pool === null
          ? null
          : `${formatBytes(r.pool.dataUsedBytes)} ${pct(r.pool.dataUsedBytes, r.pool.dataTotalBytes)}`,
        r.pool === null ? null : pct(r.pool.metadataUsedBytes, r.pool.metadataTotalBytes),
        r.dlqDepth,
        r.agentVersion,
      ]),
    );
    return ExitCode.ok;
  } finally {
    reader.client.destroy();
  }
}

// ---------------------------------------------------------------- wait

/** The object's current ETag: what the upload just wrote (the bucket is the truth). */
async function objectETag(
  ctx: CommandContext,
  config: DeploymentConfigItem,
  key: string,
): Promise<{ eTag: string; source: ETagSource } | null> {
  const [{ createS3Client }, { headObject }] = await Promise.all([
    import('../../source/s3-client.js'),
    import('../../source/head.js'),
  ]);
  const bucket = process.env.THINRELAY_BUCKET || config.bucket;
  const s3 = createS3Client();
  try {
    const head = await headObject(s3, bucket, key, { maxBlobBytes: Number.MAX_SAFE_INTEGER });
    return { eTag: head.eTag, source: 'object' };
  } catch (err) {
    if (isThinrelayError(err) && err.code === 'OBJECT_NOT_FOUND') {
      throw new FleetError(
        'KEY_NOT_FOUND',
        `no object s3://${bucket}/${key}: nothing to wait for`,
        'upload it first, or pass --etag to wait for a version you know',
        { exitCode: ExitCode.notFound },
      );
    }
    // Without S3 read access the newest rollout names the version.
    ctx.logger.warn('could not read the object; following the newest rollout', {
      bucket,
      key,
      error: formatError('HeadObject', err),
    });
    return null;
  } finally {
    s3.destroy();
  }
}

interface WaitReporter {
  update(s: ImageStatus, elapsedMs: number): void;
  end(): void;
}

function waitReporter(ctx: CommandContext): WaitReporter {
  if (process.stderr.isTTY && !ctx.json) {
    let drawn = false;
    return {
      update(s, elapsedMs) {
        const width = 30;
        const c = s.counts;
        const n = Math.max(c.expected, 1);
        const ready = Math.round((c.ready / n) * width);
        const failed = Math.min(width - ready, Math.round((c.failed / n) * width));
        const bar = '#'.repeat(ready) + 'x'.repeat(failed) + '.'.repeat(width - ready - failed);
        const text = `${s.key} [${bar}] ${countsLine(s)}  ${Math.round(elapsedMs / 1000)}s`;
        process.stderr.write(`\r\x1b[2K${text}`);
        drawn = true;
      },
      end() {
        if (drawn) process.stderr.write('\n');
      },
    };
  }
  let last = '';
  return {
    update(s, elapsedMs) {
      const line = JSON.stringify({
        key: s.key,
        etag: s.etag,
        outcome: s.outcome,
        counts: s.counts,
      });
      if (line === last) return;
      last = line;
      printJson({
        key: s.key,
        etag: s.etag,
        etagSource: s.etagSource,
        outcome: s.outcome,
        counts: s.counts,
        elapsedSeconds: Math.round(elapsedMs / 100) / 10,
      });
    },
    end() {},
  };
}

function durationOption(
  ctx: CommandContext,
  flag: string,
  fallback: number,
  parse: (t: string) => number | null,
): number {
  const raw = ctx.values[flag];
  if (typeof raw !== 'string') return fallback;
  const ms = parse(raw);
  if (ms === null || ms <= 0) {
    throw new UsageError('USAGE', `--${flag} must be a duration like 90s, 10m or 1h, got "${raw}"`);
  }
  return ms;
}

async function wait(ctx: CommandContext): Promise<number> {
  const key = keyArg(ctx, true)!;
  const view = await import('../../fleet/view/fleet-view.js');
  const timeoutMs = durationOption(ctx, 'timeout', 10 * 60_000, view.parseDuration);
  const intervalMs = durationOption(ctx, 'interval', 2000, view.parseDuration);
  const reader = await openReader(ctx);
  const started = Date.now();
  const deadline = started + timeoutMs;
  const reporter = waitReporter(ctx);
  try {
    const config = await reader.config();
    checkRouted(key, view.routedGroups(key, config), config);
    const asked =
      typeof ctx.values.etag === 'string'
        ? { eTag: ctx.values.etag, source: 'flag' as const }
        : await objectETag(ctx, config, key);
    let last: ImageStatus | null = null;
    let hostList: HostItem[] = [];
    let hostsReadAt = 0;
    for (;;) {
      try {
        // The host list changes slowly: read it every 30 s, the image's items every round.
        if (Date.now() - hostsReadAt > 30_000 || last?.outcome !== 'in-progress') {
          hostList = await reader.hosts();
          hostsReadAt = Date.now();
        }
        const [items, rollout] = await Promise.all([
          reader.imageItems(key),
          asked === null ? reader.latestPutRollout(key) : Promise.resolve(null),
        ]);
        last = view.imageStatus({
          key,
          config,
          hosts: hostList,
          items,
          rollout,
          asked,
          now: Date.now(),
        });
        reporter.update(last, Date.now() - started);
      } catch (err) {
        // A pipeline's wait rides out a DynamoDB hiccup until its deadline.
        if (!(err instanceof FleetError) || err.exitCode !== ExitCode.temporary) throw err;
        ctx.logger.warn('fleet table unreachable; retrying', { error: err.message });
      }
      const done = finalOutcome(last?.outcome);
      if (done !== null) {
        reporter.end();
        reportEnd(ctx, last!, done === ExitCode.ok ? 'ready' : 'failed');
        return done;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        reporter.end();
        if (last !== null) reportEnd(ctx, last, 'timeout');
        process.stderr.write(
          `thinrelay: fleet wait: [TIMEOUT] ${key} not ready on every live host after ${Math.round(timeoutMs / 1000)} s` +
            (last === null ? '' : ` (${countsLine(last)})`) +
            '\n',
        );
        return ExitCode.timeout;
      }
      await sleep(Math.min(intervalMs, left));
    }
  } finally {
    reporter.end();
    reader.client.destroy();
  }
}

function finalOutcome(outcome: RolloutOutcome | undefined): number | null {
  if (outcome === 'ready') return ExitCode.ok;
  if (outcome === 'failed') return ExitCode.imageFailed;
  return null;
}

function reportEnd(ctx: CommandContext, s: ImageStatus, how: 'ready' | 'failed' | 'timeout'): void {
  if (ctx.json || !process.stderr.isTTY) {
    printJson({ ...statusJson(s), result: how });
    return;
  }
  if (how === 'ready') {
    process.stdout.write(`${s.key} ${s.etag ?? ''} ready on all ${s.counts.expected} live hosts\n`);
    return;
  }
  for (const h of s.hosts.filter((r) => r.expected && r.state !== 'ready')) {
    const why =
      h.state === 'failed'
        ? `[${h.reason}] ${h.message ?? ''}`
        : h.reason !== null && (h.state === 'untrusted' || h.state === 'awaiting-signature')
          ? `${h.state} [${h.reason}] ${h.message ?? ''}`
          : h.state;
    process.stdout.write(`${h.host} (${h.group}): ${why}\n`);
  }
}

// ---------------------------------------------------------------- forget

async function forget(ctx: CommandContext): Promise<number> {
  const hostId = ctx.positionals[1];
  if (hostId === undefined) throw new UsageError('USAGE', 'missing HOST', usageHint(USAGE));
  const reader = await openReader(ctx);
  const [{ forgetHost }, { createSqsClient }] = await Promise.all([
    import('../../fleet/view/fleet-forget.js'),
    import('../../queue/sqs-client.js'),
  ]);
  const sqs = createSqsClient(null);
  try {
    const config = await reader.config();
    const result = await forgetHost({
      hostId,
      force: ctx.values.force === true,
      reader,
      dynamo: reader.client,
      sqs,
      config,
      now: Date.now(),
    });
    if (ctx.json) printJson(result);
    else {
      process.stdout.write(
        `forgot host ${result.host}: ${result.queuesDeleted.length} queues deleted, ${result.itemsDeleted} items removed\n`,
      );
      for (const q of result.queuesDeleted) process.stdout.write(`  deleted ${q}\n`);
    }
    return ExitCode.ok;
  } finally {
    sqs.destroy();
    reader.client.destroy();
  }
}

export const fleetCommand: Command = {
  name: 'fleet',
  summary: 'the whole fleet: rollout status per image, hosts, wait for a rollout, forget a host',
  usage: USAGE,
  options: {
    table: { type: 'string' },
    etag: { type: 'string' },
    timeout: { type: 'string' },
    interval: { type: 'string' },
    force: { type: 'boolean' },
  },
  optionDocs: {
    table: {
      text: 'the fleet table the stack created',
      arg: 'NAME',
      env: 'THINRELAY_FLEET_TABLE',
    },
    etag: {
      text: '`wait`: the version to wait for',
      arg: 'ETAG',
      default: "the object's current ETag, else the newest rollout's",
    },
    timeout: {
      text: '`wait`: give up after this long (exit 124); 90s, 10m, 1h',
      arg: 'DURATION',
      default: '10m',
    },
    interval: { text: '`wait`: how often the table is read', arg: 'DURATION', default: '2s' },
    force: { text: '`forget`: also a host that is still live', default: 'off' },
  },
  examples: [
    'thinrelay fleet status images/app.tar',
    'thinrelay fleet hosts --json',
    'thinrelay fleet wait images/app.tar --timeout 10m   # after: aws s3 cp app.tar s3://BUCKET/images/app.tar',
    'thinrelay fleet forget i-0123456789abcdef0',
  ],
  async run(ctx) {
    const sub = ctx.positionals[0];
    switch (sub) {
      case 'status':
        return status(ctx);
      case 'hosts':
        return hosts(ctx);
      case 'wait':
        return wait(ctx);
      case 'forget':
        return forget(ctx);
      default:
        throw unknownSubcommand(fleetCommand, sub, ['status', 'hosts', 'wait', 'forget']);
    }
  },
};
