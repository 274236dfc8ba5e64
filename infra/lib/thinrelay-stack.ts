/**
 * The whole deployment: images bucket → fan-out Lambda → host queues (which
 * agents create and name by group and host id); the fleet table with its
 * CONFIG item; one role (+ instance profile) per host group; the fleet sweep;
 * the operator policy; fleet-level alarms; and the outputs agents are
 * configured from (lib/outputs.ts). Nothing in it is per host, so the
 * template's size does not depend on the fleet's.
 */
import { Aws, CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import * as rolesanywhere from 'aws-cdk-lib/aws-rolesanywhere';
import type { Construct } from 'constructs';
import { AlarmSink, fanoutAlarms, fleetAlarms } from './alarms.js';
import type { ThinrelayConfig } from './config.js';
import { FanoutFunction } from './fanout-function.js';
import { FleetTable } from './fleet-table.js';
import { HostGroup } from './host-group.js';
import { ImagesBucket } from './images-bucket.js';
import { acknowledgeNagFindings, type NagAcknowledgement } from './nag.js';
import { OperatorPolicy } from './operator-policy.js';
import { groupOutputKeys, STACK_OUTPUTS } from './outputs.js';
import { SWEEP_SERVICE, SweepFunction } from './sweep-function.js';

export interface ThinrelayStackProps extends StackProps {
  config: ThinrelayConfig;
}

export class ThinrelayStack extends Stack {
  readonly images: ImagesBucket;
  readonly fleet: FleetTable;
  readonly fanout: FanoutFunction;
  readonly sweep: SweepFunction;
  readonly groups: HostGroup[];
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
    this.fleet = new FleetTable(this, 'Fleet', config, this.images.bucket.bucketName);
    const table = this.fleet.table;
    this.fanout = new FanoutFunction(this, 'Fanout', config, this.images.bucket, table);
    this.sweep = new SweepFunction(this, 'Sweep', config, table);
    this.alarms = new AlarmSink(this, 'Alarms', config);
    for (const alarm of [
      ...fanoutAlarms(this.fanout, config, this.fanout.function, this.fanout.failedEvents),
      ...fleetAlarms(this, config, this.sweep.function, SWEEP_SERVICE, 'thinrelay-fanout'),
    ]) {
      this.alarms.watch(alarm);
    }

    this.groups = config.groups.map(
      (group) =>
        new HostGroup(this, `Group-${group.name}`, {
          config,
          group,
          bucket: this.images.bucket,
          table,
        }),
    );

    this.operator = new OperatorPolicy(this, 'Operator', config, this.fanout, table);

    const anywhere = this.groups.filter((g) => g.group.principal.type === 'rolesAnywhere');
    if (anywhere.length > 0) {
      // The profile hosts name when they ask Roles Anywhere for credentials.
      const profile = new rolesanywhere.CfnProfile(this, 'RolesAnywhereProfile', {
        name: `${config.namePrefix}-hosts`,
        roleArns: anywhere.map((g) => g.role.roleArn),
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
    this.output(
      STACK_OUTPUTS.fleetTable,
      this.fleet.table.tableName,
      'THINRELAY_FLEET_TABLE: fleet state and the deployment config',
    );
    if (config.groups.length > 0) {
      // CloudFormation rejects an empty output value: no groups, no output.
      this.output(STACK_OUTPUTS.groups, config.groups.map((g) => g.name).join(','), 'Host groups');
    }
    this.output(STACK_OUTPUTS.fanoutFunction, this.fanout.function.functionName, 'Fan-out Lambda');
    this.output(
      STACK_OUTPUTS.sweepFunction,
      this.sweep.function.functionName,
      'Fleet sweep Lambda',
    );
    this.output(
      STACK_OUTPUTS.failedEventsQueue,
      this.fanout.failedEvents.queueUrl,
      'S3 events the fan-out Lambda gave up on',
    );
    this.output(
      STACK_OUTPUTS.operatorPolicy,
      this.operator.policy.managedPolicyArn,
      'Attach to operators: redrive, replay, fleet status and forget',
    );
    if (this.alarms.topic !== null) {
      this.output(STACK_OUTPUTS.alarmTopic, this.alarms.topic.topicArn, 'Alarm notifications');
    }
    for (const g of this.groups) {
      const keys = groupOutputKeys(g.group.name);
      const who = `host group ${g.group.name}`;
      this.output(keys.roleArn, g.role.roleArn, `IAM role of ${who}`);
      if (g.instanceProfile !== null) {
        this.output(
          keys.instanceProfile,
          g.instanceProfile.instanceProfileName,
          `EC2 instance profile of ${who} (launch templates, Auto Scaling groups)`,
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
