/**
 * CloudWatch alarms and where they notify. Every alarm exists whether or not
 * anyone is notified; an SNS topic (created for an e-mail address, or an
 * existing one by ARN) is optional. Each alarm's description says what it
 * means and what to do: the operator reads it in the notification.
 */
import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { names, type ThinrelayConfig } from './config.js';

const PERIOD = Duration.minutes(5);

/** "More than zero in one 5-minute period"; no data (an idle queue or function) is fine. */
export function anyAbove0(metric: cloudwatch.Metric) {
  return {
    metric: metric.with({ period: PERIOD }),
    threshold: 0,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
    evaluationPeriods: 1,
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
  };
}

/** Alarm when messages are waiting in `queue` (a DLQ or the failed-events queue). */
export function queueNotEmptyAlarm(
  scope: Construct,
  id: string,
  queue: sqs.IQueue,
  alarmName: string,
  description: string,
): cloudwatch.Alarm {
  return new cloudwatch.Alarm(scope, id, {
    alarmName,
    alarmDescription: description,
    ...anyAbove0(queue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum' })),
  });
}

/** The fan-out Lambda's errors and throttles, and events it gave up on. */
export function fanoutAlarms(
  scope: Construct,
  config: ThinrelayConfig,
  fn: lambda.IFunction,
  failedEvents: sqs.IQueue,
): cloudwatch.Alarm[] {
  const prefix = names.fanoutFunction(config);
  return [
    new cloudwatch.Alarm(scope, 'FanoutErrorsAlarm', {
      alarmName: `${prefix}-errors`,
      alarmDescription:
        'The fan-out Lambda failed invocations (bad config, SQS errors, undeliverable messages). ' +
        'Lambda retries each event twice; read the function log for the cause. ' +
        'Events that still fail land in the failed-events queue (its own alarm).',
      ...anyAbove0(fn.metricErrors({ statistic: 'Sum' })),
    }),
    new cloudwatch.Alarm(scope, 'FanoutThrottlesAlarm', {
      alarmName: `${prefix}-throttles`,
      alarmDescription:
        'The fan-out Lambda was throttled (account or reserved concurrency). Lambda keeps retrying ' +
        'throttled async events up to the maximum event age; raise the concurrency limit if this persists.',
      ...anyAbove0(fn.metricThrottles({ statistic: 'Sum' })),
    }),
    queueNotEmptyAlarm(
      scope,
      'FailedEventsAlarm',
      failedEvents,
      `${names.failedEventsQueue(config)}-not-empty`,
      'S3 events the fan-out Lambda gave up on (all retries failed or too old): some hosts did not hear of an image. ' +
        'Fix the cause (function log), then replay them (infra/README.md, "Replaying failed events").',
    ),
  ];
}

/** Metric names the sweep publishes (lambda/src/sweep.ts), namespace `thinrelay`, dimension service. */
export const FLEET_METRICS = {
  liveHosts: 'LiveHosts',
  staleHosts: 'StaleHosts',
  hostsWithFailedImage: 'HostsWithFailedImage',
  dlqMessages: 'DlqMessages',
  oldestUnfinishedRolloutSeconds: 'OldestUnfinishedRolloutSeconds',
  hostsSwept: 'HostsSwept',
} as const;
/** The fan-out's count of rollouts it could not record in the fleet table. */
export const ROLLOUT_RECORD_FAILED = 'RolloutRecordFailed';

function thinrelayMetric(service: string, metricName: string, period: Duration) {
  return new cloudwatch.Metric({
    namespace: 'thinrelay',
    metricName,
    dimensionsMap: { service },
    statistic: 'Maximum',
    period,
  });
}

/**
 * One alarm per fleet concern, whatever the fleet's size: stale hosts, hosts
 * with a failed image, messages in any host DLQ, a rollout unfinished for too
 * long, a sweep that fails or does not run, rollouts the fan-out could not
 * record. They replace the per-host DLQ alarms of the per-host stack.
 */
export function fleetAlarms(
  scope: Construct,
  config: ThinrelayConfig,
  sweep: lambda.IFunction,
  sweepService: string,
  fanoutService: string,
): cloudwatch.Alarm[] {
  const prefix = config.namePrefix;
  // The sweep publishes once per run: a period shorter than its interval would see gaps.
  const period = Duration.minutes(Math.max(5, config.fleet.sweepEveryMinutes));
  const fleet = (name: string) => thinrelayMetric(sweepService, name, period);
  const above = (threshold: number) => ({
    threshold,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
    evaluationPeriods: 1,
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
  });
  return [
    new cloudwatch.Alarm(scope, 'FleetStaleHostsAlarm', {
      alarmName: `${prefix}-fleet-stale-hosts`,
      alarmDescription:
        `Hosts have not sent a heartbeat for over ${config.fleet.staleAfterSeconds} s. ` +
        '`thinrelay fleet hosts` lists them. A host that was decommissioned without `thinrelay agent deregister` ' +
        `is removed by the sweep after ${config.fleet.sweepAfterSeconds} s more; otherwise check its agent.`,
      metric: fleet(FLEET_METRICS.staleHosts),
      ...above(0),
    }),
    new cloudwatch.Alarm(scope, 'FleetFailedImagesAlarm', {
      alarmName: `${prefix}-fleet-failed-images`,
      alarmDescription:
        'Live hosts report an image as failed. `thinrelay fleet status` shows each failure with host, reason code ' +
        'and message; fix the object (a new upload rolls out again) or the host.',
      metric: fleet(FLEET_METRICS.hostsWithFailedImage),
      ...above(0),
    }),
    new cloudwatch.Alarm(scope, 'FleetDlqAlarm', {
      alarmName: `${prefix}-fleet-dlq-not-empty`,
      alarmDescription:
        `Messages wait in a host DLQ (${prefix}-dlq-<group>-<host>): an agent failed an event ` +
        'maxReceiveCount times. `thinrelay fleet hosts` shows DLQ depth per host; fix the cause, then redrive ' +
        '(infra/README.md, "Redrive").',
      metric: fleet(FLEET_METRICS.dlqMessages),
      ...above(0),
    }),
    new cloudwatch.Alarm(scope, 'FleetRolloutAlarm', {
      alarmName: `${prefix}-fleet-rollout-stuck`,
      alarmDescription:
        `A rollout has been unfinished for over ${config.fleet.rolloutAlarmMinutes} minutes: a live host of its ` +
        'groups has neither the image ready nor failed. `thinrelay fleet status KEY` shows which hosts.',
      metric: fleet(FLEET_METRICS.oldestUnfinishedRolloutSeconds),
      ...above(config.fleet.rolloutAlarmMinutes * 60),
    }),
    new cloudwatch.Alarm(scope, 'SweepErrorsAlarm', {
      alarmName: `${names.sweepFunction(config)}-errors`,
      alarmDescription:
        'The fleet sweep failed: fleet metrics are stale and long-gone hosts are not removed. ' +
        `Read its log: aws logs tail /aws/lambda/${names.sweepFunction(config)} --since 1h.`,
      metric: sweep.metricErrors({ statistic: 'Sum', period }),
      ...above(0),
    }),
    new cloudwatch.Alarm(scope, 'SweepMissingAlarm', {
      alarmName: `${names.sweepFunction(config)}-not-running`,
      alarmDescription:
        'The fleet sweep has not run for three periods: the fleet alarms see no data. Check its EventBridge ' +
        'schedule rule is enabled and the function exists.',
      metric: sweep.metricInvocations({ statistic: 'Sum', period }),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
      evaluationPeriods: 3,
      treatMissingData: cloudwatch.TreatMissingData.BREACHING,
    }),
    new cloudwatch.Alarm(scope, 'RolloutRecordAlarm', {
      alarmName: `${names.fanoutFunction(config)}-rollouts-unrecorded`,
      alarmDescription:
        'The fan-out sent image events but could not record the rollout in the fleet table (after retries). ' +
        'Hosts got their messages; `fleet status`/`fleet wait` lack the expected host set for those keys. ' +
        'Check the function log (RolloutRecordFailed) and the table.',
      metric: thinrelayMetric(fanoutService, ROLLOUT_RECORD_FAILED, PERIOD).with({
        statistic: 'Sum',
      }),
      ...above(0),
    }),
  ];
}

/** Where alarms notify; no topic configured = alarms only show in the console. */
export class AlarmSink extends Construct {
  readonly topic: sns.ITopic | null;

  constructor(scope: Construct, id: string, config: ThinrelayConfig) {
    super(scope, id);
    if (config.alarms.topicArn !== null) {
      this.topic = sns.Topic.fromTopicArn(this, 'Topic', config.alarms.topicArn);
    } else if (config.alarms.email !== null) {
      // CloudWatch can't publish to a topic under the AWS-managed SNS key, so
      // the topic gets its own key that lets CloudWatch encrypt.
      const key = new kms.Key(this, 'TopicKey', {
        description: `${config.namePrefix} alarm topic encryption`,
        enableKeyRotation: true,
      });
      key.addToResourcePolicy(
        new iam.PolicyStatement({
          principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
          actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
          resources: ['*'], // in a key policy, "*" is this key
        }),
      );
      const topic = new sns.Topic(this, 'Topic', {
        topicName: `${config.namePrefix}-alarms`,
        masterKey: key,
        enforceSSL: true,
      });
      topic.addSubscription(new subscriptions.EmailSubscription(config.alarms.email));
      this.topic = topic;
    } else {
      this.topic = null;
    }
  }

  /** Notifies the topic (if any) when `alarm` fires and when it clears. */
  watch(alarm: cloudwatch.Alarm): void {
    if (this.topic === null) return;
    const action = new actions.SnsAction(this.topic);
    alarm.addAlarmAction(action);
    alarm.addOkAction(action);
  }
}
