/**
 * The cdk-nag AwsSolutions findings this stack accepts, each with its reason,
 * acknowledged on the narrowest construct that raises it. Everything else must
 * pass: the app runs the checks on every synth and the tests assert none is
 * left. Findings about wildcard resources are acknowledged by their exact
 * rendered resource (cdk-nag's "Resource::<...>" form), so widening a policy
 * later raises a new finding instead of hiding under an old acknowledgement.
 */
import { Stack, Validations } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';
import { dlqsArnPattern, hostQueuesArnPattern, queueArnPattern } from './arns.js';
import { names } from './config.js';
import type { ThinrelayStack } from './thinrelay-stack.js';

/** The construct id CDK gives the singleton function behind every AwsCustomResource. */
const AWS_CUSTOM_RESOURCE_ID = 'AWS679f53fac002430cb0da5b7982bd2287';

export interface NagAcknowledgement {
  path: string;
  id: string;
  reason: string;
}

/** Acknowledges the accepted findings on `stack`; returns them (for the tests and the README). */
export function acknowledgeNagFindings(stack: ThinrelayStack): NagAcknowledgement[] {
  const acks: NagAcknowledgement[] = [];
  const ack = (scope: IConstruct, id: string, reason: string) => {
    Validations.of(scope).acknowledge({ id, reason });
    acks.push({ path: scope.node.path, id, reason });
  };
  const config = stack.config;
  const hostQueues = resourceFinding(stack, hostQueuesArnPattern(stack, config));
  const dlqs = resourceFinding(stack, dlqsArnPattern(stack, config));

  ack(
    stack.fanout.failedEvents,
    'AwsSolutions-SQS3',
    "This queue is itself the dead-letter store: the fan-out Lambda's on-failure destination. " +
      'A DLQ behind it would only move the same events one hop further; it keeps them 14 days and is alarmed when non-empty.',
  );
  ack(
    stack.fanout.role,
    'AwsSolutions-IAM5[Resource::*]',
    'sqs:ListQueues (host-queue discovery) supports no resource-level permissions: "*" is its only valid resource. ' +
      'It is the only action on "*" in this policy.',
  );
  ack(
    stack.fanout.role,
    `AwsSolutions-IAM5[${hostQueues}]`,
    'The Lambda discovers host queues at run time by this name prefix (HOST_QUEUE_PREFIX), so a host added later ' +
      'is served without widening the policy; the pattern matches only host queues (DLQs and the failed-events queue ' +
      'are named outside it) in this account and region, and the only action is sqs:SendMessage.',
  );
  ack(
    stack.operator.policy,
    `AwsSolutions-IAM5[${hostQueues}]`,
    'Redrive sends DLQ messages back to their host queue as the operator: every host queue of this deployment, ' +
      'matched by name prefix so the managed policy neither changes nor grows (6,144-character cap) with the fleet.',
  );
  ack(
    stack.operator.policy,
    `AwsSolutions-IAM5[${dlqs}]`,
    'Redrive (StartMessageMoveTask and what it needs) from any host DLQ of this deployment, matched by the DLQ name ' +
      'prefix for the same reasons as the host queues.',
  );
  ack(
    stack.sweep.role,
    'AwsSolutions-IAM5[Resource::*]',
    'sqs:ListQueues (finding host queues and DLQs by prefix) supports no resource-level permissions: "*" is its only ' +
      'valid resource. It is the only action on "*" in this policy.',
  );
  ack(
    stack.sweep.role,
    `AwsSolutions-IAM5[${hostQueues}]`,
    'The sweep reads the attributes of, and deletes, queues of hosts gone longer than staleAfter + sweepAfter; ' +
      'hosts create their queues at run time, so they are matched by the host-queue name prefix (no SendMessage, ' +
      'no ReceiveMessage).',
  );
  ack(
    stack.sweep.role,
    `AwsSolutions-IAM5[${dlqs}]`,
    'The sweep sums the depth of every host DLQ (the fleet DLQ alarm) and deletes the DLQs of removed hosts; ' +
      'they exist only at run time, so they are matched by the DLQ name prefix.',
  );
  ack(
    stack.operator.policy,
    'AwsSolutions-IAM5[Resource::*]',
    'sqs:ListQueues (fleet hosts / fleet forget find host queues by prefix) supports no resource-level ' +
      'permissions: "*" is its only valid resource. It is the only action on "*" in this policy.',
  );
  const customResourceFunction = stack.node.tryFindChild(AWS_CUSTOM_RESOURCE_ID);
  if (customResourceFunction !== undefined) {
    ack(
      customResourceFunction,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      "CDK's AwsCustomResource provider that writes the fleet table's CONFIG item at deploy time; its own " +
        'policy allows only dynamodb:PutItem of the CONFIG partition, and this managed policy only its logs.',
    );
    ack(
      customResourceFunction,
      'AwsSolutions-L1',
      "CDK's AwsCustomResource provider runs on the Node.js CDK picks for its own handler (nodejs24.x in " +
        'aws-cdk-lib 2.278, supported until 2028-04-30), only at deploy time; our own functions run nodejs26.x.',
    );
  }
  for (const group of stack.groups) {
    if (group.group.principal.type === 'ec2') {
      for (const pattern of [
        names.groupQueuePrefix(config, group.group.name),
        names.groupDlqPrefix(config, group.group.name),
      ]) {
        ack(
          group.role,
          `AwsSolutions-IAM5[${resourceFinding(stack, queueArnPattern(stack, `${pattern}*`))}]`,
          'Hosts of this group create, consume and delete their own queues at run time, named ' +
            `${pattern}<host id>. EC2 instance-profile sessions carry no IAM-visible host id equal to it, so the ` +
            'group\'s names are the narrowest pattern IAM can express (infra/README.md, "What IAM prevents").',
        );
      }
    }
    ack(
      group.role,
      `AwsSolutions-IAM5[${resourceFinding(stack, stack.images.bucket.arnForObjects(`${config.imagesPrefix}*`))}]`,
      `The agent reads any image object (s3:GetObject, s3:GetObjectVersion) under the images prefix ` +
        `${JSON.stringify(config.imagesPrefix)}, which is exactly the set of keys the fan-out publishes; nothing outside it.`,
    );
  }
  const notifications = stack.node.children.find((c) =>
    c.node.id.startsWith('BucketNotificationsHandler'),
  );
  if (notifications !== undefined) {
    ack(
      notifications,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      "CDK's own deploy-time handler that writes the bucket's notification configuration (S3 has no " +
        'CloudFormation-native way with an existing function); it only writes its own logs with this policy and runs ' +
        'only during deployments.',
    );
  }
  return acks;
}

/** cdk-nag's "Resource::..." finding for `value`: CloudFormation references flattened as it does. */
export function resourceFinding(scope: IConstruct, value: string): string {
  const flatten = (node: unknown): string => {
    if (typeof node === 'string') return node.replace(/\$\{/g, '<').replace(/\}/g, '>');
    if (typeof node === 'object' && node !== null) {
      const o = node as Record<string, unknown>;
      if (Array.isArray(o['Fn::Join'])) {
        const [delimiter, items] = o['Fn::Join'] as [string, unknown[]];
        return items.map(flatten).join(delimiter);
      }
      if (Array.isArray(o['Fn::GetAtt'])) {
        const [resource, attribute] = o['Fn::GetAtt'] as [unknown, unknown];
        return `<${flatten(resource)}.${flatten(attribute)}>`;
      }
      if (o.Ref !== undefined) return `<${flatten(o.Ref)}>`;
    }
    return JSON.stringify(node);
  };
  return `Resource::${flatten(Stack.of(scope).resolve(value))}`;
}
