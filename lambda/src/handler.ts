/**
 * The fan-out Lambda's entry point: S3 notification → image events → one
 * message per event on the queue of every host that should hold the image →
 * one rollout item per image event in the fleet table (when FLEET_TABLE is
 * set). A signature sidecar's event goes to its image's hosts and is no
 * rollout: it is not an image.
 *
 * Per container (reused across warm invocations): the SQS and DynamoDB
 * clients and the queue directory with its discovery cache. The SDK reads
 * region, credentials and AWS_ENDPOINT_URL_SQS / _DYNAMODB from the
 * environment itself.
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import type { S3Event, S3Handler } from 'aws-lambda';
import { loadConfig, type LambdaConfig } from './config.js';
import { FanoutError, publish, QueueDirectory, targetsFor } from './fanout.js';
import { eventsFromNotification, type SkipReason } from './records.js';
import { isImageEvent, recordRollouts } from './rollouts.js';

const logger = new Logger({ serviceName: 'thinrelay-fanout' });
const metrics = new Metrics({ namespace: 'thinrelay', serviceName: 'thinrelay-fanout' });

interface Runtime {
  config: LambdaConfig;
  sqs: SQSClient;
  ddb: DynamoDBClient | null;
  directory: QueueDirectory | null;
}

let runtime: Runtime | undefined;

function getRuntime(): Runtime {
  if (!runtime) {
    // A ConfigError here fails the invocation before anything is sent.
    const config = loadConfig();
    const sqs = new SQSClient({});
    const directory =
      config.queueUrls === null
        ? new QueueDirectory(sqs, config.queuePrefix, config.discoveryTtlMs)
        : null;
    const ddb = config.fleetTable !== null ? new DynamoDBClient({}) : null;
    runtime = { config, sqs, ddb, directory };
  }
  return runtime;
}

export async function handleNotification(notification: S3Event): Promise<void> {
  const { config, sqs, ddb, directory } = getRuntime();
  try {
    const skipped = new Map<SkipReason, number>();
    const events = eventsFromNotification(notification, config, logger, (reason) =>
      skipped.set(reason, (skipped.get(reason) ?? 0) + 1),
    );
    metrics.addMetric('EventsReceived', MetricUnit.Count, events.length);
    recordSkips(skipped);
    if (events.length === 0) return;
    const queueUrls = config.queueUrls ?? (directory ? await directory.list() : []);
    if (queueUrls.length === 0) {
      // No hosts yet is a valid fleet state, not an error worth retrying;
      // the rollout is still recorded (hosts that join catch up by sync).
      logger.warn('no host queues found; nothing to publish', { prefix: config.queuePrefix });
    }
    try {
      const result = await publish(events, queueUrls, config, {
        sqs,
        concurrency: config.fanoutConcurrency,
      });
      metrics.addMetric('EventsPublished', MetricUnit.Count, events.length);
      metrics.addMetric('MessagesSent', MetricUnit.Count, result.sent);
      metrics.addMetric('QueuesTargeted', MetricUnit.Count, result.queues);
      logger.info('published', {
        events: events.map((e) => ({ kind: e.kind, key: e.key, sequencer: e.sequencer })),
        messages: result.sent,
        queues: result.queues,
      });
      const rollouts = events.filter(isImageEvent);
      metrics.addMetric('SidecarsPublished', MetricUnit.Count, events.length - rollouts.length);
      if (ddb !== null && config.fleetTable !== null && rollouts.length > 0) {
        const unrecorded = await recordRollouts(
          rollouts.map((event) => ({ event, queueUrls: targetsFor(event.key, queueUrls, config) })),
          { ddb, table: config.fleetTable },
        );
        metrics.addMetric(
          'RolloutsRecorded',
          MetricUnit.Count,
          rollouts.length - unrecorded.length,
        );
        if (unrecorded.length > 0) {
          metrics.addMetric('RolloutRecordFailed', MetricUnit.Count, unrecorded.length);
          logger.error('rollouts sent but not recorded in the fleet table', { unrecorded });
        }
      }
    } catch (err) {
      if (err instanceof FanoutError) {
        metrics.addMetric('FailedEntries', MetricUnit.Count, err.failures.length);
        logger.error('fan-out incomplete; failing so Lambda retries', { failures: err.failures });
      }
      // The queue set may have changed (a host removed): rediscover on retry.
      directory?.invalidate();
      throw err;
    }
  } finally {
    metrics.publishStoredMetrics();
  }
}

/** RecordsSkipped in total, and per reason (a dimension: an alarm can pick one). */
function recordSkips(skipped: ReadonlyMap<SkipReason, number>): void {
  let total = 0;
  for (const [reason, n] of skipped) {
    total += n;
    const single = metrics.singleMetric();
    single.addDimension('reason', reason);
    single.addMetric('RecordsSkipped', MetricUnit.Count, n);
  }
  metrics.addMetric('RecordsSkipped', MetricUnit.Count, total);
}

export const handler: S3Handler = async (event, context) => {
  // Every log line of this invocation carries the request id, function and cold start.
  logger.addContext(context);
  metrics.captureColdStartMetric();
  await handleNotification(event);
};
