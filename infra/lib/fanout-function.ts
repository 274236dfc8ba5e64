/**
 * The fan-out Lambda (lambda/src/handler.ts), bundled locally with esbuild,
 * with the environment lambda/src/config.ts reads, an on-failure destination
 * for events it gives up on, and the S3 notifications that invoke it.
 *
 * Its role can list queues (discovery), send to host queues (by the name
 * prefix discovery uses) and to the failed-events queue (the destination),
 * and write its own log group. It reads nothing from S3: every field it
 * publishes comes from the notification itself.
 */
import { fileURLToPath } from 'node:url';
import { ArnFormat, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as s3n from 'aws-cdk-lib/aws-s3-notifications';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { DLQ_RETENTION_DAYS, names, type ThinrelayConfig } from './config.js';

/** This file is dist/infra/lib/fanout-function.js once compiled; the repo root is three up. */
const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** The only SQS action SendMessage and SendMessageBatch both authorize with. */
export const FANOUT_SEND_ACTIONS = ['sqs:SendMessage'];

export class FanoutFunction extends Construct {
  readonly function: nodejs.NodejsFunction;
  readonly failedEvents: sqs.Queue;
  readonly role: iam.Role;

  constructor(scope: Construct, id: string, config: ThinrelayConfig, bucket: s3.Bucket) {
    super(scope, id);
    const functionName = names.fanoutFunction(config);

    this.failedEvents = new sqs.Queue(this, 'FailedEvents', {
      queueName: names.failedEventsQueue(config),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(DLQ_RETENTION_DAYS),
    });

    const logGroup = new logs.LogGroup(this, 'Logs', {
      logGroupName: `/aws/lambda/${functionName}`,
      retention: config.fanout.logRetentionDays as logs.RetentionDays,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    // A role of our own instead of the AWSLambdaBasicExecutionRole managed
    // policy, which may write to every log group in the account.
    this.role = new iam.Role(this, 'Role', {
      description: 'thinrelay fan-out Lambda',
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
    });
    logGroup.grantWrite(this.role);
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

    const hostQueuePrefix = names.hostQueuePrefix(config);
    this.function = new nodejs.NodejsFunction(this, 'Function', {
      functionName,
      description: 'thinrelay: S3 image events to per-host SQS queues',
      entry: `${REPO_ROOT}lambda/src/handler.ts`,
      handler: 'handler',
      projectRoot: REPO_ROOT,
      depsLockFilePath: `${REPO_ROOT}package-lock.json`,
      runtime: lambda.Runtime.NODEJS_22_X,
      architecture: lambda.Architecture.ARM_64,
      memorySize: config.fanout.memoryMiB,
      timeout: Duration.seconds(config.fanout.timeoutSeconds),
      role: this.role,
      logGroup,
      environment: {
        HOST_QUEUE_PREFIX: hostQueuePrefix,
        ROUTES: JSON.stringify(config.routes),
        IMAGE_BUCKETS: bucket.bucketName,
        IMAGE_PREFIX: config.imagesPrefix,
        IMAGE_SUFFIXES: config.imageSuffixes.join(','),
        FANOUT_CONCURRENCY: String(config.fanout.concurrency),
        QUEUE_DISCOVERY_TTL_SECONDS: String(config.fanout.discoveryTtlSeconds),
        POWERTOOLS_SERVICE_NAME: 'thinrelay-fanout',
        POWERTOOLS_METRICS_NAMESPACE: 'thinrelay',
      },
      retryAttempts: 2,
      maxEventAge: Duration.seconds(config.fanout.maxEventAgeSeconds),
      onFailure: new destinations.SqsDestination(this.failedEvents),
      bundling: {
        format: nodejs.OutputFormat.ESM,
        target: 'node22',
        minify: true,
        sourceMap: false,
        // Bundle the AWS SDK too: the function runs the SDK version the
        // lockfile pins and the tests exercised, not whatever the runtime has.
        externalModules: [],
        mainFields: ['module', 'main'],
        // Some bundled CommonJS dependencies call require(): give ESM one.
        banner:
          "import { createRequire as __thinrelayRequire } from 'node:module'; const require = __thinrelayRequire(import.meta.url);",
        forceDockerBundling: false,
      },
    });

    // ObjectCreated and ObjectRemoved under the images prefix; suffixes are
    // filtered in the function (one notification rule has a single suffix).
    const target = new s3n.LambdaDestination(this.function);
    const filter = { prefix: config.imagesPrefix };
    bucket.addEventNotification(s3.EventType.OBJECT_CREATED, target, filter);
    bucket.addEventNotification(s3.EventType.OBJECT_REMOVED, target, filter);
  }
}

/**
 * Every host queue of this deployment, present and future: the same name
 * prefix the function discovers queues by. DLQs and the failed-events queue
 * are named outside it (config.ts), so they never match.
 */
export function hostQueuesArnPattern(scope: Construct, config: ThinrelayConfig): string {
  return Stack.of(scope).formatArn({
    service: 'sqs',
    resource: `${names.hostQueuePrefix(config)}*`,
    arnFormat: ArnFormat.NO_RESOURCE_NAME,
  });
}
