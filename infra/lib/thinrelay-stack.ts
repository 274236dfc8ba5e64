/**
 * The whole deployment: images bucket → fan-out Lambda → one queue (+ DLQ,
 * role, alarm) per configured host; the operator policy; the Lambda's alarms;
 * and the outputs agents are configured from (lib/outputs.ts).
 */
import { Aws, CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import * as rolesanywhere from 'aws-cdk-lib/aws-rolesanywhere';
import type { Construct } from 'constructs';
import { AlarmSink, fanoutAlarms } from './alarms.js';
import type { ThinrelayConfig } from './config.js';
import { FanoutFunction } from './fanout-function.js';
import { HostQueue } from './host-queue.js';
import { ImagesBucket } from './images-bucket.js';
import { acknowledgeNagFindings, type NagAcknowledgement } from './nag.js';
import { OperatorPolicy } from './operator-policy.js';
import { hostOutputKeys, STACK_OUTPUTS } from './outputs.js';

export interface ThinrelayStackProps extends StackProps {
  config: ThinrelayConfig;
}

export class ThinrelayStack extends Stack {
  readonly images: ImagesBucket;
  readonly fanout: FanoutFunction;
  readonly hosts: HostQueue[];
  readonly operator: OperatorPolicy;
  readonly alarms: AlarmSink;
  readonly config: ThinrelayConfig;
  /** The cdk-nag findings this stack accepts, with their reasons (lib/nag.ts). */
  readonly nagAcknowledgements: NagAcknowledgement[];

  constructor(scope: Construct, id: string, props: ThinrelayStackProps) {
    super(scope, id, props);
    // Access-log delivery by bucket policy: the buckets disable ACLs
    // (BucketOwnerEnforced). Set here so the stack is right whatever the app's context.
    this.node.setContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy', true);
    const { config } = props;
    this.config = config;

    this.images = new ImagesBucket(this, 'Images', config);
    this.fanout = new FanoutFunction(this, 'Fanout', config, this.images.bucket);
    this.alarms = new AlarmSink(this, 'Alarms', config);
    for (const alarm of fanoutAlarms(
      this.fanout,
      config,
      this.fanout.function,
      this.fanout.failedEvents,
    )) {
      this.alarms.watch(alarm);
    }

    this.hosts = config.hosts.map((host) => {
      const hq = new HostQueue(this, `Host-${host.name}`, {
        config,
        host,
        bucket: this.images.bucket,
      });
      this.alarms.watch(hq.dlqAlarm);
      return hq;
    });

    this.operator = new OperatorPolicy(this, 'Operator', config, this.fanout);

    if (config.hostPrincipal.type === 'rolesAnywhere' && this.hosts.length > 0) {
      // The profile hosts name when they ask Roles Anywhere for credentials;
      // each role's trust policy still pins the certificate's CN to its host.
      const profile = new rolesanywhere.CfnProfile(this, 'RolesAnywhereProfile', {
        name: `${config.namePrefix}-hosts`,
        roleArns: this.hosts.map((h) => h.role.roleArn),
        enabled: true,
        durationSeconds: 3600,
      });
      this.output(
        STACK_OUTPUTS.rolesAnywhereProfile,
        profile.attrProfileArn,
        'Roles Anywhere profile for host credentials',
      );
    }

    this.outputs(config);
    this.nagAcknowledgements = acknowledgeNagFindings(this);
  }

  private outputs(config: ThinrelayConfig): void {
    this.output(
      STACK_OUTPUTS.bucket,
      this.images.bucket.bucketName,
      'THINRELAY_BUCKET: upload images here',
    );
    this.output(
      STACK_OUTPUTS.imagesPrefix,
      config.imagesPrefix,
      'Images are published from under this key prefix',
    );
    this.output(STACK_OUTPUTS.region, Aws.REGION, 'AWS_REGION for agents');
    if (config.hosts.length > 0) {
      // CloudFormation rejects an empty output value: no hosts, no output.
      this.output(
        STACK_OUTPUTS.hosts,
        config.hosts.map((h) => h.name).join(','),
        'Configured hosts',
      );
    }
    this.output(STACK_OUTPUTS.fanoutFunction, this.fanout.function.functionName, 'Fan-out Lambda');
    this.output(
      STACK_OUTPUTS.failedEventsQueue,
      this.fanout.failedEvents.queueUrl,
      'S3 events the fan-out Lambda gave up on',
    );
    this.output(
      STACK_OUTPUTS.operatorPolicy,
      this.operator.policy.managedPolicyArn,
      'Attach to operators: redrive and replay',
    );
    if (this.alarms.topic !== null) {
      this.output(STACK_OUTPUTS.alarmTopic, this.alarms.topic.topicArn, 'Alarm notifications');
    }
    for (const hq of this.hosts) {
      const keys = hostOutputKeys(hq.host.name);
      const who = `host ${hq.host.name}`;
      this.output(keys.queueUrl, hq.queue.queueUrl, `THINRELAY_QUEUE_URL of ${who}`);
      this.output(keys.dlqUrl, hq.dlq.queueUrl, `THINRELAY_DLQ_URL of ${who}`);
      this.output(keys.roleArn, hq.role.roleArn, `IAM role of ${who}`);
      if (hq.instanceProfile !== null) {
        this.output(
          keys.instanceProfile,
          hq.instanceProfile.instanceProfileName,
          `EC2 instance profile of ${who}`,
        );
      }
    }
  }

  private output(key: string, value: string, description: string): void {
    // Direct children of the stack keep their id as the logical id: the key
    // agent-config looks up.
    new CfnOutput(this, key, { value, description });
  }
}
