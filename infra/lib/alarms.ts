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
