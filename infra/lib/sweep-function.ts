/**
 * The fleet sweep (lambda/src/sweep-handler.ts), run by an EventBridge
 * schedule: it reads the fleet table and the host queues, publishes the fleet
 * metrics the fleet alarms watch, and removes hosts stale for longer than
 * staleAfter + sweepAfter (their queues, DLQs and items).
 *
 * Its role reads the table, deletes only host and rollout items, lists
 * queues, reads host queue and DLQ attributes and deletes host queues and
 * DLQs; it sends no message and writes nothing else.
 */
import { Duration } from 'aws-cdk-lib';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import { Construct } from 'constructs';
import { dlqsArnPattern, hostQueuesArnPattern } from './arns.js';
import { bundledFunction } from './bundled-function.js';
import { names, type ThinrelayConfig } from './config.js';

export const SWEEP_SERVICE = 'thinrelay-sweep';
export const SWEEP_QUEUE_ACTIONS = ['sqs:GetQueueUrl', 'sqs:GetQueueAttributes', 'sqs:DeleteQueue'];

export class SweepFunction extends Construct {
  readonly function: nodejs.NodejsFunction;
  readonly role: iam.Role;
  readonly schedule: events.Rule;

  constructor(scope: Construct, id: string, config: ThinrelayConfig, table: dynamodb.ITable) {
    super(scope, id);
    const fn = bundledFunction(this, {
      functionName: names.sweepFunction(config),
      description: 'thinrelay: fleet metrics and removal of long-stale hosts',
      entry: 'lambda/src/sweep-handler.ts',
      memoryMiB: 256,
      // A sweep of thousands of hosts is a few thousand requests.
      timeoutSeconds: 300,
      logRetentionDays: config.fanout.logRetentionDays,
      environment: {
        FLEET_TABLE: table.tableName,
        POWERTOOLS_SERVICE_NAME: SWEEP_SERVICE,
        POWERTOOLS_METRICS_NAMESPACE: 'thinrelay',
      },
      // Sweeps are idempotent; a failed one is simply followed by the next.
      functionProps: { retryAttempts: 0 },
    });
    this.function = fn.function;
    this.role = fn.role;

    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ReadFleet',
        actions: ['dynamodb:Scan', 'dynamodb:Query', 'dynamodb:GetItem'],
        resources: [table.tableArn],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        // Removal first marks a host gone (conditional on its last heartbeat).
        sid: 'MarkHostsGone',
        actions: ['dynamodb:UpdateItem'],
        resources: [table.tableArn],
        conditions: {
          'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': ['HOST#*'] },
          Null: { 'dynamodb:LeadingKeys': 'false' },
        },
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'RemoveHostAndSupersededRolloutItems',
        actions: ['dynamodb:DeleteItem', 'dynamodb:BatchWriteItem'],
        resources: [table.tableArn],
        conditions: {
          'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': ['HOST#*', 'ROLLOUT#*'] },
          Null: { 'dynamodb:LeadingKeys': 'false' },
        },
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'FindHostQueues',
        // ListQueues has no resource-level permissions.
        actions: ['sqs:ListQueues'],
        resources: ['*'],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'InspectAndRemoveHostQueues',
        actions: SWEEP_QUEUE_ACTIONS,
        resources: [hostQueuesArnPattern(this, config), dlqsArnPattern(this, config)],
      }),
    );

    this.schedule = new events.Rule(this, 'Schedule', {
      description: `thinrelay fleet sweep every ${config.fleet.sweepEveryMinutes} minute(s)`,
      schedule: events.Schedule.rate(Duration.minutes(config.fleet.sweepEveryMinutes)),
      targets: [new targets.LambdaFunction(this.function, { retryAttempts: 0 })],
    });
  }
}
