/**
 * The fan-out Lambda (lambda/src/handler.ts) with the environment
 * lambda/src/config.ts reads, an on-failure destination for events it gives
 * up on, and the S3 notifications that invoke it.
 *
 * Its role can list queues (discovery), send to host queues (by the name
 * prefix discovery uses) and to the failed-events queue (the destination),
 * record rollouts (ROLLOUT# items only) in the fleet table, and write its own
 * log group. It reads nothing from S3: every field it publishes comes from
 * the notification itself.
 */
import { Duration } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import type * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as s3n from 'aws-cdk-lib/aws-s3-notifications';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { queueNames } from '../../schema/fleet.js';
import { hostQueuesArnPattern } from './arns.js';
import { bundledFunction } from './bundled-function.js';
import { DLQ_RETENTION_DAYS, names, type ThinrelayConfig } from './config.js';

/** The only SQS action SendMessage and SendMessageBatch both authorize with. */
export const FANOUT_SEND_ACTIONS = ['sqs:SendMessage'];

export class FanoutFunction extends Construct {
  readonly function: nodejs.NodejsFunction;
  readonly failedEvents: sqs.Queue;
  readonly role: iam.Role;

  constructor(
    scope: Construct,
    id: string,
    config: ThinrelayConfig,
    bucket: s3.Bucket,
    table: dynamodb.ITable,
  ) {
    super(scope, id);

    this.failedEvents = new sqs.Queue(this, 'FailedEvents', {
      queueName: names.failedEventsQueue(config),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(DLQ_RETENTION_DAYS),
    });

    const fn = bundledFunction(this, {
      functionName: names.fanoutFunction(config),
      description: 'thinrelay: S3 image events to per-host SQS queues',
      entry: 'lambda/src/handler.ts',
      memoryMiB: config.fanout.memoryMiB,
      timeoutSeconds: config.fanout.timeoutSeconds,
      logRetentionDays: config.fanout.logRetentionDays,
      environment: {
        HOST_QUEUE_PREFIX: queueNames.hostQueuePrefix(config.namePrefix),
        ROUTES: JSON.stringify(config.routes),
        IMAGE_BUCKETS: bucket.bucketName,
        IMAGE_PREFIX: config.imagesPrefix,
        IMAGE_SUFFIXES: config.imageSuffixes.join(','),
        FANOUT_CONCURRENCY: String(config.fanout.concurrency),
        QUEUE_DISCOVERY_TTL_SECONDS: String(config.fanout.discoveryTtlSeconds),
        FLEET_TABLE: table.tableName,
        POWERTOOLS_SERVICE_NAME: 'thinrelay-fanout',
        POWERTOOLS_METRICS_NAMESPACE: 'thinrelay',
      },
      functionProps: {
        retryAttempts: 2,
        maxEventAge: Duration.seconds(config.fanout.maxEventAgeSeconds),
        onFailure: new destinations.SqsDestination(this.failedEvents),
      },
    });
    this.function = fn.function;
    this.role = fn.role;

    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'DiscoverHostQueues',
        // ListQueues has no resource-level permissions: "*" is the only valid resource.
        actions: ['sqs:ListQueues'],
        resources: ['*'],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'PublishToHostQueues',
        actions: FANOUT_SEND_ACTIONS,
        resources: [hostQueuesArnPattern(this, config)],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'RecordRollouts',
        actions: ['dynamodb:PutItem'],
        resources: [table.tableArn],
        conditions: {
          'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': ['ROLLOUT#*'] },
          Null: { 'dynamodb:LeadingKeys': 'false' },
        },
      }),
    );

    // ObjectCreated and ObjectRemoved under the images prefix; suffixes are
    // filtered in the function (one notification rule has a single suffix).
    const target = new s3n.LambdaDestination(this.function);
    const filter = { prefix: config.imagesPrefix };
    bucket.addEventNotification(s3.EventType.OBJECT_CREATED, target, filter);
    bucket.addEventNotification(s3.EventType.OBJECT_REMOVED, target, filter);
  }
}
