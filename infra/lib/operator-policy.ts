/**
 * What an operator needs to recover from failures, as one managed policy to
 * attach to their role: redrive any host DLQ back to its host queue
 * (StartMessageMoveTask and what it needs on both ends), and replay events
 * the fan-out Lambda gave up on (read the failed-events queue, invoke the
 * function). Queues are matched by this deployment's name prefixes, so hosts
 * added later are covered without a policy change and the policy's size does
 * not grow with the fleet (managed policies are capped at 6,144 characters).
 */
import { ArnFormat, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { names, type ThinrelayConfig } from './config.js';
import { hostQueuesArnPattern } from './fanout-function.js';

export const REDRIVE_SOURCE_ACTIONS = [
  'sqs:StartMessageMoveTask',
  'sqs:ListMessageMoveTasks',
  'sqs:CancelMessageMoveTask',
  // A move task receives from and deletes on the DLQ as the caller.
  'sqs:ReceiveMessage',
  'sqs:DeleteMessage',
  'sqs:GetQueueAttributes',
  'sqs:ListDeadLetterSourceQueues',
];

export class OperatorPolicy extends Construct {
  readonly policy: iam.ManagedPolicy;

  constructor(
    scope: Construct,
    id: string,
    config: ThinrelayConfig,
    fanout: { function: lambda.IFunction; failedEvents: sqs.IQueue },
  ) {
    super(scope, id);
    const dlqs = dlqsArnPattern(this, config);
    this.policy = new iam.ManagedPolicy(this, 'Policy', {
      description: `thinrelay (${config.namePrefix}) operator: redrive host DLQs, replay failed fan-out events`,
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
          resources: [hostQueuesArnPattern(this, config)],
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
      ],
    });
  }
}

/** Every host DLQ of this deployment, by the DLQ name prefix. */
export function dlqsArnPattern(scope: Construct, config: ThinrelayConfig): string {
  return Stack.of(scope).formatArn({
    service: 'sqs',
    resource: `${names.dlqPrefix(config)}*`,
    arnFormat: ArnFormat.NO_RESOURCE_NAME,
  });
}
