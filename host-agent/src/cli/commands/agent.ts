/** thinrelay agent: the daemon. Long-polls this host's queue and applies image events. */
import type { S3Client } from '@aws-sdk/client-s3';
import { EnvironmentError } from '../../errors.js';
import { sdkLogger } from '../../log.js';
import type { Command, CommandContext } from '../command.js';

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
  const { loadDaemonConfig } = await import('../../daemon/config.js');
  const daemon = loadDaemonConfig({
    queueUrl: ctx.values['queue-url'] as string | undefined,
    concurrency: ctx.values.concurrency as string | undefined,
    metricsAddr: ctx.values['metrics-addr'] as string | undefined,
  });
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
  const sqs = createSqsClient(daemon.queueUrl, { logger: sdkLogger(ctx.logger) });
  const agent = new Agent({
    queue: new HostQueue(sqs, daemon.queueUrl),
    deps: rt,
    concurrency: daemon.concurrency,
    visibilitySeconds: daemon.visibilitySeconds,
    waitSeconds: daemon.waitSeconds,
    drainSeconds: daemon.drainSeconds,
    transientAttempts: daemon.transientAttempts,
    transientBaseDelayMs: daemon.transientBaseDelayMs,
    retryDelaySeconds: defaultRetryDelaySeconds,
  });
  const endpoint =
    daemon.metricsAddress === null
      ? null
      : await http.startHttpEndpoint(daemon.metricsAddress, {
          health: () => agent.health(),
          metrics: () => agent.metrics.render(),
        });
  if (endpoint !== null) ctx.logger.info('health and metrics endpoint', { url: endpoint.url });

  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    signals++;
    if (signals === 1) {
      agent.stop(`received ${sig}`);
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
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await endpoint?.close();
    lock.release();
    sqs.destroy();
    if (s3 !== undefined) (await s3).destroy();
  }
}

export const agentCommand: Command = {
  name: 'agent',
  summary: "run the daemon: apply image events from this host's SQS queue",
  usage: 'thinrelay agent [--queue-url URL] [--concurrency N] [--metrics-addr HOST:PORT|off]',
  options: {
    'queue-url': { type: 'string' },
    concurrency: { type: 'string' },
    'metrics-addr': { type: 'string' },
  },
  run,
};
