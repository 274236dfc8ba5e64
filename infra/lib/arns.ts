/**
 * ARNs of queues that exist only at run time (agents create them), matched
 * by the naming convention of schema/fleet.ts in this stack's account and
 * region. Every policy that names host queues builds its ARNs here.
 */
import { ArnFormat, Stack } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';
import { queueNames } from '../../schema/fleet.js';
import type { ThinrelayConfig } from './config.js';

/** An SQS ARN for a queue name or name pattern (`*`, `?`, policy variables). */
export function queueArnPattern(scope: IConstruct, namePattern: string): string {
  return Stack.of(scope).formatArn({
    service: 'sqs',
    resource: namePattern,
    arnFormat: ArnFormat.NO_RESOURCE_NAME,
  });
}

/**
 * Every host queue of this deployment, present and future: the prefix the
 * fan-out Lambda discovers queues by. DLQs and the failed-events queue are
 * named outside it, so they never match.
 */
export function hostQueuesArnPattern(
  scope: IConstruct,
  config: Pick<ThinrelayConfig, 'namePrefix'>,
): string {
  return queueArnPattern(scope, `${queueNames.hostQueuePrefix(config.namePrefix)}*`);
}

/** Every host DLQ of this deployment. */
export function dlqsArnPattern(
  scope: IConstruct,
  config: Pick<ThinrelayConfig, 'namePrefix'>,
): string {
  return queueArnPattern(scope, `${queueNames.dlqPrefix(config.namePrefix)}*`);
}
