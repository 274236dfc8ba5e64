/**
 * thinrelay agent: the daemon. Long-polls this host's queue and applies image
 * events. With --group it joins a host group (fleet/): registers its own
 * queues, heartbeats, catches up with the bucket. `agent deregister` leaves.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { existsSync } from 'node:fs';
import type { SQSClient } from '@aws-sdk/client-sqs';
import { EnvironmentError, UsageError } from '../../errors.js';
import { sdkLogger } from '../../log.js';
import type { Command, CommandContext } from '../command.js';
import { printJson, usageHint } from '../output.js';
import { unknownSubcommand } from '../help.js';

function checkHostReady(): void {
  if (process.getuid?.() !== 0) {
    throw new EnvironmentError(
      'NOT_ROOT',
      'the agent needs root (devices, mkfs, mounts)',
      'run it as root (see deploy/systemd/thinrelay-agent.service)',
    );
  }
}

async function run(ctx: CommandContext): Promise<number> {
  if (ctx.positionals[0] === 'deregister') return deregister(ctx);
  if (ctx.positionals.length > 0)
    throw unknownSubcommand({ name: 'agent', usage }, ctx.positionals[0], ['deregister']);
  const { loadAgentSettings } = await import('../../daemon/agent-settings.js');
  const flags = {
    group: ctx.values.group as string | undefined,
    hostId: ctx.values['host-id'] as string | undefined,
  };
  let settings: import('../../daemon/agent-settings.js').AgentSettings;
  try {
    settings = loadAgentSettings({
      ...flags,
      queueUrl: ctx.values['queue-url'] as string | undefined,
      concurrency: ctx.values.concurrency as string | undefined,
      metricsAddr: ctx.values['metrics-addr'] as string | undefined,
      snapshotterSocket: ctx.values['snapshotter-socket'] as string | undefined,
    });
  } catch (err) {
    if (err instanceof UsageError && err.code === 'USAGE' && err.hint === undefined)
      throw new UsageError('USAGE', err.message, usageHint(usage));
    throw err;
  }
  const { daemon, fleet, snapshotter } = settings;
  ctx.config();
  checkHostReady();
  const [
    { Agent, defaultRetryDelaySeconds },
    { HostQueue },
    { createSqsClient },
    http,
    { acquireAgentLock },
  ] = await Promise.all([
    import('../../daemon/agent.js'),
    import('../../queue/host-queue.js'),
    import('../../queue/sqs-client.js'),
    import('../../daemon/http-endpoint.js'),
    import('../../daemon/state-lock.js'),
  ]);
  let s3: Promise<S3Client> | undefined;
  const rt = ctx.runtime({
    s3: () => (s3 ??= import('../../source/s3-client.js').then((m) => m.createS3Client())),
  });
  // One agent per state dir: two would apply one key's events out of order.
  const lock = acquireAgentLock(rt.config.stateDir, rt.owner);
  // containerd's snapshots API on the agent's own store and backend (under the lock above).
  let snapshots: { close(): Promise<void> } | null = null;
  if (snapshotter !== null) {
    try {
      const { startSnapshotsService } = await import('../../snapshotter/service-host.js');
      snapshots = await startSnapshotsService(rt, snapshotter, ctx.logger);
    } catch (err) {
      lock.release();
      throw err;
    }
  }
  // Signals before the agent runs (registration may be retrying) end start-up.
  const startup = new AbortController();
  const earlySignal = (sig: NodeJS.Signals): void => startup.abort(new Error(`received ${sig}`));
  process.on('SIGINT', earlySignal);
  process.on('SIGTERM', earlySignal);

  let sqs: SQSClient;
  let member: import('../../fleet/member/fleet-member.js').FleetMember | null = null;
  let dynamo: { destroy(): void } | null = null;
  try {
    if (fleet === null) {
      sqs = createSqsClient(daemon.queueUrl, { logger: sdkLogger(ctx.logger) });
    } else {
      const [
        { resolveHostIdentity, resolveRegion },
        { FleetTable },
        { createDynamoClient },
        { FleetMember },
      ] = await Promise.all([
        import('../../fleet/member/host-id.js'),
        import('../../../../schema/fleet-table.js'),
        import('../../fleet/member/fleet-client.js'),
        import('../../fleet/member/fleet-member.js'),
      ]);
      const identity = await resolveHostIdentity(fleet.hostIdFlag);
      const region = await resolveRegion(identity.region);
      sqs = createSqsClient(null, { region, logger: sdkLogger(ctx.logger) });
      const client = createDynamoClient(region);
      dynamo = client;
      member = new FleetMember({
        settings: fleet,
        hostId: identity.hostId,
        table: new FleetTable(client, fleet.tableName),
        sqs,
        deps: rt,
        logger: ctx.logger,
        drainSeconds: daemon.drainSeconds,
        signal: startup.signal,
      });
      ctx.logger.info('joining the fleet', {
        group: fleet.group,
        hostId: identity.hostId,
        hostIdFrom: identity.source,
      });
      await member.join();
    }
  } catch (err) {
    await snapshots?.close();
    lock.release();
    if (startup.signal.aborted) return 143;
    throw err;
  } finally {
    process.off('SIGINT', earlySignal);
    process.off('SIGTERM', earlySignal);
  }
  const fleetMember = member;
  const agent = new Agent({
    queue: fleetMember?.queue ?? new HostQueue(sqs, daemon.queueUrl!),
    deps: rt,
    concurrency: daemon.concurrency,
    visibilitySeconds: daemon.visibilitySeconds,
    waitSeconds: daemon.waitSeconds,
    drainSeconds: daemon.drainSeconds,
    transientAttempts: daemon.transientAttempts,
    transientBaseDelayMs: daemon.transientBaseDelayMs,
    retryDelaySeconds: defaultRetryDelaySeconds,
    ...(fleetMember === null
      ? {}
      : {
          keyLock: fleetMember.keyLock,
          observer: fleetMember.observer,
          onReady: () => fleetMember.start(),
        }),
  });
  const endpoint =
    daemon.metricsAddress === null
      ? null
      : await http.startHttpEndpoint(daemon.metricsAddress, {
          health: () => agent.health(),
          metrics: async () =>
            (await agent.metrics.collect()) + (fleetMember?.metrics.render() ?? ''),
        });
  if (endpoint !== null) ctx.logger.info('health and metrics endpoint', { url: endpoint.url });

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals === 1) {
      agent.stop(`received ${sig}`);
      fleetMember?.stop();
      return;
    }
    // Second signal: leave now. Every step is recorded before it happens, so
    // the next start's reconcile finishes or rolls back what was in flight.
    ctx.logger.warn('second signal: exiting now; the next start recovers in-flight work', {
      signal: sig,
    });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await agent.run();
    await fleetMember?.close();
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await endpoint?.close();
    // Calls in flight finish; the socket goes before the lock does.
    await snapshots?.close();
    lock.release();
    sqs.destroy();
    dynamo?.destroy();
    if (s3 !== undefined) (await s3).destroy();
  }
}

/** thinrelay agent deregister [--group G] [--host-id ID] */
async function deregister(ctx: CommandContext): Promise<number> {
  const [
    { createSqsClient },
    { resolveHostIdentity, resolveRegion },
    { FleetTable },
    { createDynamoClient },
    { requireTable, checkGroupName },
    { readRecord },
    { deregisterHost },
    { acquireAgentLock },
    { currentOwner },
  ] = await Promise.all([
    import('../../queue/sqs-client.js'),
    import('../../fleet/member/host-id.js'),
    import('../../../../schema/fleet-table.js'),
    import('../../fleet/member/fleet-client.js'),
    import('../../fleet/member/fleet-settings.js'),
    import('../../fleet/member/registration-record.js'),
    import('../../fleet/member/deregister.js'),
    import('../../daemon/state-lock.js'),
    import('../../store/owner.js'),
  ]);
  const record = readRecord(ctx.config().stateDir);
  const groupFlag = ctx.values.group as string | undefined;
  const group = groupFlag ?? process.env.THINRELAY_GROUP ?? record?.group;
  if (group === undefined || group === '')
    throw new UsageError(
      'USAGE',
      'no group: this state dir has no registration',
      'pass --group G (and --host-id ID if the host id is not the default)',
    );
  checkGroupName(group, groupFlag !== undefined ? '--group' : 'THINRELAY_GROUP');
  const hostIdFlag = ctx.values['host-id'] as string | undefined;
  const identity =
    hostIdFlag === undefined && (process.env.THINRELAY_HOST_ID ?? '') === '' && record !== null
      ? { hostId: record.hostId, region: null }
      : await resolveHostIdentity(hostIdFlag);
  // The agent's own lock: refused while this state dir's agent runs, and none starts meanwhile.
  const stateDir = ctx.config().stateDir;
  let lock: { release(): void } | null = null;
  if (existsSync(stateDir)) {
    try {
      lock = acquireAgentLock(stateDir, currentOwner());
    } catch (err) {
      if (!(err instanceof EnvironmentError) || err.code !== 'AGENT_RUNNING') throw err;
      throw new EnvironmentError(
        'AGENT_RUNNING',
        err.message,
        'stop it first (systemctl stop thinrelay-agent: images in flight finish), then deregister',
      );
    }
  }
  const region = await resolveRegion(identity.region);
  const sqs = createSqsClient(null, { region, logger: sdkLogger(ctx.logger) });
  const client = createDynamoClient(region);
  try {
    const result = await deregisterHost(
      new FleetTable(client, requireTable(process.env)),
      sqs,
      { group, hostId: identity.hostId, record },
      ctx.logger,
    );
    if (ctx.json) printJson(result);
    else {
      const dropped = (n: number | null): string =>
        n === null ? 'did not exist' : `deleted (${n} message(s) dropped)`;
      process.stdout.write(
        `host ${result.hostId} (group ${result.group}) deregistered\n` +
          `fleet table  ${result.markedGone ? 'marked gone' : 'no host item'}\n` +
          `queue        ${result.queue.name}: ${dropped(result.queue.messagesDropped)}\n` +
          `dlq          ${result.dlq.name}: ${dropped(result.dlq.messagesDropped)}\n`,
      );
    }
    return 0;
  } finally {
    lock?.release();
    sqs.destroy();
    client.destroy();
  }
}

const usage = `thinrelay agent [--group G [--host-id ID] | --queue-url URL] [--concurrency N] [--metrics-addr HOST:PORT|off] [--snapshotter-socket PATH|off]
       thinrelay agent deregister [--group G] [--host-id ID] [--json]`;

export const agentCommand: Command = {
  name: 'agent',
  summary:
    "run the daemon: apply image events from this host's SQS queue (deregister: leave the fleet)",
  usage,
  options: {
    'queue-url': { type: 'string' },
    group: { type: 'string' },
    'host-id': { type: 'string' },
    concurrency: { type: 'string' },
    'metrics-addr': { type: 'string' },
    'snapshotter-socket': { type: 'string' },
  },
  optionDocs: {
    group: {
      text: 'join this host group: the agent registers its own queue and heartbeats in the fleet table',
      arg: 'G',
      env: 'THINRELAY_GROUP',
    },
    'host-id': {
      text: "this host's id in the fleet",
      arg: 'ID',
      env: 'THINRELAY_HOST_ID',
      default: 'the EC2 instance id, else the hostname',
    },
    'queue-url': {
      text: "this host's SQS queue (stack outputs)",
      arg: 'URL',
      env: 'THINRELAY_QUEUE_URL',
    },
    concurrency: {
      text: 'images handled at once',
      arg: 'N',
      env: 'THINRELAY_CONCURRENCY',
      default: '2',
    },
    'metrics-addr': {
      text: 'health (/healthz) and Prometheus metrics (/metrics) endpoint, or "off"',
      arg: 'HOST:PORT',
      env: 'THINRELAY_METRICS_ADDR',
      default: '127.0.0.1:9464',
    },
    'snapshotter-socket': {
      text: "serve containerd's snapshots API on this unix socket (mode, group and volume size: THINRELAY_SNAPSHOTTER_SOCKET_MODE, _GID, _VOLUME_SIZE as for `thinrelay snapshotter`)",
      arg: 'PATH',
      env: 'THINRELAY_SNAPSHOTTER_SOCKET',
      default: 'off',
    },
  },
  examples: [
    'thinrelay agent   # settings from /etc/thinrelay/agent.env, as under systemd',
    'thinrelay agent --group default --host-id web01',
    'thinrelay agent deregister --group default --json',
    'thinrelay agent --queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/thinrelay-host-web-1 --metrics-addr 127.0.0.1:9464',
  ],
  run,
};
