/**
 * One host's share of the stack: its queue (named so the fan-out Lambda
 * discovers and routes to it), its DLQ, the role its agent runs as, and the
 * alarm on its DLQ. The role can read image objects and consume its own queue,
 * nothing else: no SendMessage anywhere, no other host's queue.
 */
import { Duration, Stack } from 'aws-cdk-lib';
import type * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { queueNotEmptyAlarm } from './alarms.js';
import { DLQ_RETENTION_DAYS, names, type HostSpec, type ThinrelayConfig } from './config.js';

export interface HostQueueProps {
  config: ThinrelayConfig;
  host: HostSpec;
  bucket: s3.IBucket;
}

/** What a host's agent reads from its queue and bucket (and nothing more). */
export const HOST_QUEUE_ACTIONS = [
  'sqs:ReceiveMessage',
  'sqs:ChangeMessageVisibility',
  'sqs:DeleteMessage',
  'sqs:GetQueueAttributes',
  'sqs:GetQueueUrl',
];
export const HOST_OBJECT_ACTIONS = ['s3:GetObject', 's3:GetObjectVersion'];

export class HostQueue extends Construct {
  readonly host: HostSpec;
  readonly queue: sqs.Queue;
  readonly dlq: sqs.Queue;
  readonly role: iam.Role;
  readonly instanceProfile: iam.InstanceProfile | null;
  readonly dlqAlarm: cloudwatch.Alarm;

  constructor(scope: Construct, id: string, props: HostQueueProps) {
    super(scope, id);
    const { config, host, bucket } = props;
    this.host = host;
    const queueName = names.hostQueue(config, host);

    this.dlq = new sqs.Queue(this, 'Dlq', {
      queueName: names.dlq(config, host),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // Longer than the source's: a message's expiry counts from its original enqueue.
      retentionPeriod: Duration.days(DLQ_RETENTION_DAYS),
      redriveAllowPolicy: {
        redrivePermission: sqs.RedrivePermission.BY_QUEUE,
        // By ARN from the name: referencing the queue itself would be a cycle
        // (the queue's RedrivePolicy already references this DLQ).
        sourceQueues: [
          sqs.Queue.fromQueueArn(
            this,
            'Source',
            Stack.of(this).formatArn({ service: 'sqs', resource: queueName }),
          ),
        ],
      },
    });

    this.queue = new sqs.Queue(this, 'Queue', {
      queueName,
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(config.queues.retentionDays),
      visibilityTimeout: Duration.seconds(config.queues.visibilityTimeoutSeconds),
      receiveMessageWaitTime: Duration.seconds(20),
      deadLetterQueue: { queue: this.dlq, maxReceiveCount: config.queues.maxReceiveCount },
    });

    this.role = new iam.Role(this, 'Role', {
      description: `thinrelay agent on host ${host.name} (group ${host.group})`,
      assumedBy: hostPrincipal(config, host),
      maxSessionDuration: Duration.hours(1),
    });
    if (config.hostPrincipal.type === 'rolesAnywhere') {
      // Roles Anywhere also tags the session and sets its source identity.
      this.role.assumeRolePolicy?.addStatements(
        new iam.PolicyStatement({
          actions: ['sts:TagSession', 'sts:SetSourceIdentity'],
          principals: [hostPrincipal(config, host)],
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
        sid: 'ConsumeOwnQueue',
        actions: HOST_QUEUE_ACTIONS,
        resources: [this.queue.queueArn],
      }),
    );
    this.role.addToPolicy(
      new iam.PolicyStatement({
        // Read-only: lets the agent report its DLQ's depth.
        sid: 'InspectOwnDlq',
        actions: ['sqs:GetQueueAttributes'],
        resources: [this.dlq.queueArn],
      }),
    );

    this.instanceProfile =
      config.hostPrincipal.type === 'ec2'
        ? new iam.InstanceProfile(this, 'InstanceProfile', { role: this.role })
        : null;

    this.dlqAlarm = queueNotEmptyAlarm(
      this,
      'DlqAlarm',
      this.dlq,
      `${names.dlq(config, host)}-not-empty`,
      `Host ${host.name}: image events its agent failed ${config.queues.maxReceiveCount} times are in ${names.dlq(config, host)}. ` +
        'Check the agent (its journal) and the image, fix, then redrive the DLQ (infra/README.md, "Redrive").',
    );
  }
}

function hostPrincipal(config: ThinrelayConfig, host: HostSpec): iam.IPrincipal {
  const p = config.hostPrincipal;
  switch (p.type) {
    case 'ec2':
      return new iam.ServicePrincipal('ec2.amazonaws.com');
    case 'aws':
      return new iam.ArnPrincipal(p.principalArn);
    case 'rolesAnywhere':
      // Only certificates from this trust anchor whose CN is this host's name.
      return new iam.PrincipalWithConditions(
        new iam.ServicePrincipal('rolesanywhere.amazonaws.com'),
        {
          ArnEquals: { 'aws:SourceArn': p.trustAnchorArn },
          StringEquals: { 'aws:PrincipalTag/x509Subject/CN': host.name },
        },
      );
  }
}
