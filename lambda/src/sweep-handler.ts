/**
 * The fleet sweep Lambda's entry point (EventBridge schedule): runs one sweep
 * (sweep.ts) and publishes the fleet metrics with Powertools Metrics
 * (namespace `thinrelay`, dimension service=thinrelay-sweep), which the
 * fleet alarms watch. The table comes from FLEET_TABLE; name prefix and
 * staleness from the table's CONFIG item.
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { ConfigError } from './config.js';
import { sweep, SweepError, type SweepReport } from './sweep.js';

const logger = new Logger({ serviceName: 'thinrelay-sweep' });
const metrics = new Metrics({ namespace: 'thinrelay', serviceName: 'thinrelay-sweep' });

let clients: { ddb: DynamoDBClient; sqs: SQSClient } | undefined;

export async function runSweep(now = Date.now()): Promise<SweepReport> {
  const table = (process.env.FLEET_TABLE ?? '').trim();
  if (table === '') throw new ConfigError('FLEET_TABLE', 'required: the fleet table to sweep');
  clients ??= { ddb: new DynamoDBClient({}), sqs: new SQSClient({}) };
  const report = await sweep({ ...clients, table, now });
  try {
    metrics.addMetric('LiveHosts', MetricUnit.Count, report.liveHosts);
    metrics.addMetric('StaleHosts', MetricUnit.Count, report.staleHosts);
    metrics.addMetric('HostsWithFailedImage', MetricUnit.Count, report.hostsWithFailedImage);
    metrics.addMetric('DlqMessages', MetricUnit.Count, report.dlqMessages);
    metrics.addMetric(
      'OldestUnfinishedRolloutSeconds',
      MetricUnit.Seconds,
      report.oldestUnfinishedRolloutSeconds,
    );
    metrics.addMetric('HostsSwept', MetricUnit.Count, report.swept.length);
    metrics.addMetric('OrphanQueuesDeleted', MetricUnit.Count, report.orphanQueuesDeleted.length);
  } finally {
    metrics.publishStoredMetrics();
  }
  logger.info('fleet swept', { ...report });
  if (report.errors.length > 0) {
    // After the metrics: the errors alarm fires, the next sweep retries.
    throw new SweepError(
      `${report.errors.length} removal(s) failed: ${report.errors.map((e) => `${e.host}: ${e.error}`).join('; ')}`,
    );
  }
  return report;
}

export const handler = async (): Promise<void> => {
  await runSweep();
};
