/**
 * One host group's share of the stack: the role its agents run as (and, for
 * EC2, the instance profile a launch template or Auto Scaling group names).
 * Nothing here is per host: hosts create their own queues under the group's
 * names (schema/fleet.ts) and write their own items in the fleet table.
 *
 * The role can read image objects; create, configure, consume and delete only
 * queues named under its group (narrowed to the host's own names where the
 * principal carries a host id IAM can see); never send to a host queue; read
 * the deployment's CONFIG item; and write only host items, its own where IAM
 * can tell which host is asking (hostIdVariable below).
 */
import { Duration } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { fleetKeys, queueNames } from '../../schema/fleet.js';
import type { GroupPrincipal, GroupSpec, ThinrelayConfig } from './config.js';
import { dlqsArnPattern, hostQueuesArnPattern, queueArnPattern } from './arns.js';

export interface HostGroupProps {
  config: ThinrelayConfig;
  group: GroupSpec;
  bucket: s3.IBucket;
  table: dynamodb.ITable;
}

export const HOST_OBJECT_ACTIONS = ['s3:GetObject', 's3:GetObjectVersion'];
/** Register (create, configure, tag), consume, inspect and deregister (delete) its own queues. */
export const HOST_QUEUE_ACTIONS = [
  'sqs:CreateQueue',
  'sqs:GetQueueUrl',
  'sqs:GetQueueAttributes',
  'sqs:SetQueueAttributes',
  'sqs:TagQueue',
  'sqs:ListQueueTags',
  'sqs:ReceiveMessage',
  'sqs:ChangeMessageVisibility',
  'sqs:DeleteMessage',
  'sqs:DeleteQueue',
];
/** Its own items: heartbeat, outcomes, deregistration. */
export const HOST_ITEM_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:Query',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:BatchWriteItem',
];
/** The session tag an `aws` principal (a credential broker) must set to the host id. */
export const HOST_SESSION_TAG = 'thinrelay-host';

/**
 * The IAM policy variable whose value is the asking host's id, when the
 * principal type has one: Roles Anywhere puts the certificate's subject in
 * session tags; a broker must tag the session. EC2 instance-profile sessions
 * have none: their aws:userid is `<role id>:<instance id>` and
 * ec2:SourceInstanceARN the instance's ARN, neither of which equals a host id
 * or `HOST#<host id>` (infra/README.md, "What IAM prevents").
 */
export function hostIdVariable(principal: GroupPrincipal): string | null {
  switch (principal.type) {
    case 'rolesAnywhere':
      return '${aws:PrincipalTag/x509Subject/CN}';
    case 'aws':
      return `\${aws:PrincipalTag/${HOST_SESSION_TAG}}`;
    case 'ec2':
      return null;
  }
}

export class HostGroup extends Construct {
  readonly group: GroupSpec;
  readonly role: iam.Role;
  readonly instanceProfile: iam.InstanceProfile | null;

  constructor(scope: Construct, id: string, props: HostGroupProps) {
    super(scope, id);
    const { config, group, bucket, table } = props;
    this.group = group;
    const hostVar = hostIdVariable(group.principal);
    const host = hostVar ?? '*';

    this.role = new iam.Role(this, 'Role', {
      description: `thinrelay agents of host group ${group.name}`,
      assumedBy: groupPrincipal(group.principal),
      maxSessionDuration: Duration.hours(1),
    });
    if (group.principal.type !== 'ec2') {
      // Roles Anywhere tags the session and sets its source identity; a broker tags it with the host id.
      this.role.assumeRolePolicy?.addStatements(
        new iam.PolicyStatement({
          actions: ['sts:TagSession', 'sts:SetSourceIdentity'],
          principals: [groupPrincipal(group.principal)],
        }),
      );
    }
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ReadImages',
        actions: HOST_OBJECT_ACTIONS,
        resources: [bucket.arnForObjects(`${config.imagesPrefix}*`)],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        // Catch-up sync lists the images prefix (ListObjectsV2); with it a missing key is a 404, not a 403.
        sid: 'ListImages',
        actions: ['s3:ListBucket'],
        resources: [bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${config.imagesPrefix}*`] } },
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'OwnQueues',
        actions: HOST_QUEUE_ACTIONS,
        resources: [
          queueArnPattern(this, queueNames.hostQueue(config.namePrefix, group.name, host)),
          queueArnPattern(this, queueNames.dlq(config.namePrefix, group.name, host)),
        ],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        // Only the fan-out Lambda publishes; a host must not forge events for anyone, itself included.
        sid: 'NeverSendToHostQueues',
        effect: iam.Effect.DENY,
        actions: ['sqs:SendMessage'],
        resources: [hostQueuesArnPattern(this, config), dlqsArnPattern(this, config)],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'ReadDeploymentConfig',
        actions: ['dynamodb:GetItem'],
        resources: [table.tableArn],
        conditions: {
          'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': [fleetKeys.config.pk] },
        },
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        sid: 'WriteOwnHostItems',
        actions: HOST_ITEM_ACTIONS,
        resources: [table.tableArn],
        conditions: {
          // Equals with a host id variable: a '*' in a certificate CN or tag must not act as a wildcard.
          [hostVar === null ? 'ForAllValues:StringLike' : 'ForAllValues:StringEquals']: {
            'dynamodb:LeadingKeys': [fleetKeys.hostPk(host)],
          },
          // ForAllValues holds for an empty set: insist the request names its partition.
          Null: { 'dynamodb:LeadingKeys': 'false' },
        },
      }),
    );

    this.instanceProfile =
      group.principal.type === 'ec2'
        ? new iam.InstanceProfile(this, 'InstanceProfile', { role: this.role })
        : null;
  }
}

function groupPrincipal(p: GroupPrincipal): iam.IPrincipal {
  switch (p.type) {
    case 'ec2':
      return new iam.ServicePrincipal('ec2.amazonaws.com');
    case 'aws':
      // The broker must say which host it acts for: that tag is the host's IAM identity.
      return new iam.PrincipalWithConditions(new iam.ArnPrincipal(p.principalArn), {
        StringLike: { [`aws:RequestTag/${HOST_SESSION_TAG}`]: '?*' },
      });
    case 'rolesAnywhere':
      // Only certificates issued under this trust anchor.
      return new iam.PrincipalWithConditions(
        new iam.ServicePrincipal('rolesanywhere.amazonaws.com'),
        { ArnEquals: { 'aws:SourceArn': p.trustAnchorArn } },
      );
  }
}
