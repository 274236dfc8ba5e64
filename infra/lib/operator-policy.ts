/**
 * What an operator needs, as one managed policy to attach to their role:
 * redrive any host DLQ back to its host queue (StartMessageMoveTask and what
 * it needs on both ends); replay events the fan-out Lambda gave up on (read
 * the failed-events queue, invoke the function); read the fleet table
 * (`thinrelay fleet status/hosts/wait`); and forget a host (`thinrelay fleet
 * forget`: delete its queues, DLQ and items). Queues are matched by this
 * deployment's name prefixes, so hosts that join later are covered without a
 * policy change and the policy's size does not grow with the fleet (managed
 * policies are capped at 6,144 characters).
 */
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { FLEET_GSI } from '../../schema/fleet.js';
import { dlqsArnPattern, hostQueuesArnPattern } from './arns.js';
import type { ThinrelayConfig } from './config.js';

export const REDRIVE_SOURCE_ACTIONS = [
  'sqs:StartMessageMoveTask',
  'sqs:ListMessageMoveTasks',
  'sqs:CancelMessageMoveTask',
  // A move task receives from and deletes on the DLQ as the caller.
  'sqs:ReceiveMessage',
  'sqs:DeleteMessage',
  'sqs:GetQueueAttributes',
  'sqs:ListDeadLetterSourceQueues',
  // dlq peek shows the messages it hid while peeking again (visibility 0).
  'sqs:ChangeMessageVisibility',
];
export const FLEET_READ_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:Query',
  'dynamodb:Scan',
  'dynamodb:BatchGetItem',
];
export const FORGET_ITEM_ACTIONS = ['dynamodb:DeleteItem', 'dynamodb:BatchWriteItem'];
export const FORGET_QUEUE_ACTIONS = [
  'sqs:GetQueueUrl',
  'sqs:GetQueueAttributes',
  'sqs:DeleteQueue',
];

export class OperatorPolicy extends Construct {
  readonly policy: iam.ManagedPolicy;

  constructor(
    scope: Construct,
    id: string,
    config: ThinrelayConfig,
    fanout: { function: lambda.IFunction; failedEvents: sqs.IQueue },
    table: dynamodb.ITable,
  ) {
    super(scope, id);
    const dlqs = dlqsArnPattern(this, config);
    const hostQueues = hostQueuesArnPattern(this, config);
    this.policy = new iam.ManagedPolicy(this, 'Policy', {
      description: `thinrelay (${config.namePrefix}) operator: redrive host DLQs, replay failed fan-out events, fleet status and forget`,
      statements: [
        new iam.PolicyStatement({
          sid: 'RedriveFromHostDlqs',
          actions: REDRIVE_SOURCE_ACTIONS,
          resources: [dlqs],
        }),
        new iam.PolicyStatement({
          // Redriven messages are sent to their original queue as the caller.
          sid: 'RedriveIntoHostQueues',
          actions: ['sqs:SendMessage', 'sqs:GetQueueAttributes'],
          resources: [hostQueues],
        }),
        new iam.PolicyStatement({
          sid: 'ReadFailedFanoutEvents',
          actions: [
            'sqs:ReceiveMessage',
            'sqs:DeleteMessage',
            'sqs:ChangeMessageVisibility',
            'sqs:GetQueueAttributes',
          ],
          resources: [fanout.failedEvents.queueArn],
        }),
        new iam.PolicyStatement({
          sid: 'ReplayFailedFanoutEvents',
          actions: ['lambda:InvokeFunction'],
          resources: [fanout.function.functionArn],
        }),
        new iam.PolicyStatement({
          sid: 'ReadFleet',
          actions: FLEET_READ_ACTIONS,
          resources: [table.tableArn, `${table.tableArn}/index/${FLEET_GSI}`],
        }),
        new iam.PolicyStatement({
          sid: 'ForgetHostItems',
          actions: FORGET_ITEM_ACTIONS,
          resources: [table.tableArn],
          conditions: {
            'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': ['HOST#*'] },
            Null: { 'dynamodb:LeadingKeys': 'false' },
          },
        }),
        new iam.PolicyStatement({
          sid: 'ForgetHostQueues',
          actions: FORGET_QUEUE_ACTIONS,
          resources: [hostQueues, dlqs],
        }),
        new iam.PolicyStatement({
          // `fleet hosts` and `fleet forget` find queues by prefix; ListQueues has no resource-level permissions.
          sid: 'ListQueues',
          actions: ['sqs:ListQueues'],
          resources: ['*'],
        }),
      ],
    });
  }
}
