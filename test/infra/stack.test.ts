/**
 * Template assertions for the thinrelay stack: one synth per config shape,
 * shared by the tests of that shape. Least privilege is checked by evaluating
 * the synthesized policies against concrete ARNs (harness.ts), not by
 * matching their text.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { App, Stack } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import type * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks } from 'cdk-nag';
import { parseConfig } from '../../infra/lib/config.js';
import { deploymentConfigItem } from '../../infra/lib/deployment-item.js';
import { agentEnv, groupOutputKeys, STACK_OUTPUTS, stackOutputs } from '../../infra/lib/outputs.js';
import { loadConfig } from '../../lambda/src/config.js';
import { targetsFor } from '../../lambda/src/fanout.js';
import { fromItem } from '../../schema/item-codec.js';
import { FLEET_GSI, fleetKeys, queueNames } from '../../schema/fleet.js';
import {
  ACCOUNT,
  allows,
  BASE_CONFIG,
  concrete,
  findId,
  managedPolicyStatements,
  queueArn,
  REGION,
  resourcesOfType,
  roleStatements,
  synth,
  type Synth,
} from './harness.js';

const base = synth(BASE_CONFIG);
const { json } = base;

/** Hosts that would register at run time: nothing of them is in the template. */
const HOSTS = [
  { id: 'i-0a1b2c3d4e5f60718', group: 'default' },
  { id: 'i-0f1e2d3c4b5a69788', group: 'gpu' },
];
const hostQueue = (h: (typeof HOSTS)[number]) => queueNames.hostQueue('thinrelay', h.group, h.id);
const dlq = (h: (typeof HOSTS)[number]) => queueNames.dlq('thinrelay', h.group, h.id);
const queueId = (s: Synth, name: string) => findId(s.json, 'AWS::SQS::Queue', 'QueueName', name);
const roleIdOf = (s: Synth, group: string) => {
  const g = s.stack.groups.find((x) => x.group.name === group);
  assert.ok(g, `group ${group}`);
  return s.stack.getLogicalId(g.role.node.defaultChild as never);
};
const bucketId = findId(json, 'AWS::S3::Bucket', 'VersioningConfiguration', { Status: 'Enabled' });
const bucketArn = concrete(json, { 'Fn::GetAtt': [bucketId, 'Arn'] });
const functionId = findId(json, 'AWS::Lambda::Function', 'FunctionName', 'thinrelay-fanout');
const sweepId = findId(json, 'AWS::Lambda::Function', 'FunctionName', 'thinrelay-sweep');
const tableId = findId(json, 'AWS::DynamoDB::Table', 'TableName', 'thinrelay-fleet');
const tableArn = `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/thinrelay-fleet`;
/** Every queue name a running fleet of HOSTS has, with the stack's own. */
const fleetQueueNames = [
  ...resourcesOfType(json, 'AWS::SQS::Queue').map(([, p]) => p.QueueName as string),
  ...HOSTS.map(hostQueue),
  ...HOSTS.map(dlq),
];
/** A DynamoDB request naming these partition keys. */
const keys = (...pks: string[]) => ({ 'dynamodb:LeadingKeys': pks });

describe('images bucket', () => {
  test('private, encrypted, TLS-only, versioned, noncurrent versions expire', () => {
    base.template.hasResourceProperties('AWS::S3::Bucket', {
      VersioningConfiguration: { Status: 'Enabled' },
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [
          { ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } },
        ],
      },
      LoggingConfiguration: Match.objectLike({ LogFilePrefix: 'images-bucket/' }),
      LifecycleConfiguration: {
        Rules: Match.arrayWith([
          Match.objectLike({
            NoncurrentVersionExpiration: { NoncurrentDays: 30 },
            Status: 'Enabled',
          }),
        ]),
      },
    });
    base.template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: bucketId },
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Deny',
            Principal: { AWS: '*' },
            Action: 's3:*',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
        ]),
      },
    });
  });

  test('ObjectCreated and ObjectRemoved under the images prefix invoke the fan-out Lambda', () => {
    const [[, n]] = resourcesOfType(json, 'Custom::S3BucketNotifications') as [
      [string, Record<string, unknown>],
    ];
    assert.deepEqual(n.BucketName, { Ref: bucketId });
    const configs = (
      n.NotificationConfiguration as { LambdaFunctionConfigurations: Record<string, unknown>[] }
    ).LambdaFunctionConfigurations;
    assert.deepEqual(configs.map((c) => c.Events).sort(), [
      ['s3:ObjectCreated:*'],
      ['s3:ObjectRemoved:*'],
    ]);
    for (const c of configs) {
      assert.deepEqual(c.LambdaFunctionArn, { 'Fn::GetAtt': [functionId, 'Arn'] });
      assert.deepEqual(c.Filter, { Key: { FilterRules: [{ Name: 'prefix', Value: 'images/' }] } });
    }
    base.template.hasResourceProperties('AWS::Lambda::Permission', {
      Action: 'lambda:InvokeFunction',
      Principal: 's3.amazonaws.com',
      FunctionName: { 'Fn::GetAtt': [functionId, 'Arn'] },
      SourceArn: { 'Fn::GetAtt': [bucketId, 'Arn'] },
    });
  });
});

describe('fan-out Lambda', () => {
  const fn = json.Resources[functionId]!.Properties!;
  const env = (fn.Environment as { Variables: Record<string, unknown> }).Variables;

  test('Node.js 26 on arm64, bundled ESM handler', () => {
    assert.equal(fn.Runtime, 'nodejs26.x');
    assert.deepEqual(fn.Architectures, ['arm64']);
    assert.equal(fn.Handler, 'index.handler');
  });

  test('its environment is what lambda/src/config.ts reads, and it parses there', () => {
    assert.deepEqual(env, {
      HOST_QUEUE_PREFIX: 'thinrelay-host-',
      ROUTES: '{"images/gpu/":["gpu"]}',
      IMAGE_BUCKETS: { Ref: bucketId },
      IMAGE_PREFIX: 'images/',
      IMAGE_SUFFIXES: '',
      FANOUT_CONCURRENCY: '16',
      QUEUE_DISCOVERY_TTL_SECONDS: '60',
      FLEET_TABLE: { Ref: tableId },
      POWERTOOLS_SERVICE_NAME: 'thinrelay-fanout',
      POWERTOOLS_METRICS_NAMESPACE: 'thinrelay',
    });
    const concreteEnv = Object.fromEntries(
      Object.entries(env).map(([k, v]) => [k, concrete(json, v)]),
    );
    const parsed = loadConfig(concreteEnv);
    assert.equal(parsed.queuePrefix, 'thinrelay-host-');
    assert.equal(parsed.queueUrls, null, 'queues are discovered, not listed');
    assert.deepEqual(parsed.buckets, [concrete(json, { Ref: bucketId })]);
    assert.equal(parsed.fleetTable, 'thinrelay-fleet');
  });

  test("the Lambda's discovery and routing find exactly the hosts' queues, by group", () => {
    const urls = fleetQueueNames.map((n) => `https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/${n}`);
    const discovered = urls.filter((u) =>
      u.slice(u.lastIndexOf('/') + 1).startsWith(env.HOST_QUEUE_PREFIX as string),
    );
    assert.deepEqual(
      discovered.map((u) => u.slice(u.lastIndexOf('/') + 1)).sort(),
      HOSTS.map(hostQueue).sort(),
      'no DLQ and no failed-events queue is discovered',
    );
    const cfg = loadConfig({
      HOST_QUEUE_PREFIX: env.HOST_QUEUE_PREFIX as string,
      ROUTES: env.ROUTES as string,
    });
    const to = (key: string) =>
      targetsFor(key, discovered, cfg).map((u) => u.slice(u.lastIndexOf('/') + 1));
    assert.deepEqual(to('images/gpu/cuda.tar'), [hostQueue(HOSTS[1]!)]);
    assert.deepEqual(to('images/base.tar').sort(), HOSTS.map(hostQueue).sort());
  });

  test('async invocation: 2 retries, a maximum event age, failures to the failed-events queue', () => {
    const failedId = queueId(base, 'thinrelay-fanout-failed');
    base.template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: functionId },
      MaximumRetryAttempts: 2,
      MaximumEventAgeInSeconds: 21600,
      DestinationConfig: { OnFailure: { Destination: { 'Fn::GetAtt': [failedId, 'Arn'] } } },
    });
    base.template.hasResourceProperties('AWS::SQS::Queue', {
      QueueName: 'thinrelay-fanout-failed',
      SqsManagedSseEnabled: true,
      MessageRetentionPeriod: 14 * 86400,
    });
  });

  test('its role sends only to host queues (and its failure destination), records only rollouts, reads no S3', () => {
    const roleId = (fn.Role as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
    const statements = roleStatements(json, roleId);
    for (const h of HOSTS)
      assert.ok(allows(statements, 'sqs:SendMessage', queueArn(hostQueue(h))), hostQueue(h));
    assert.ok(allows(statements, 'sqs:SendMessage', queueArn('thinrelay-host-new_group-i-1')));
    for (const h of HOSTS)
      assert.ok(!allows(statements, 'sqs:SendMessage', queueArn(dlq(h))), dlq(h));
    assert.ok(allows(statements, 'sqs:SendMessage', queueArn('thinrelay-fanout-failed')));
    assert.ok(!allows(statements, 'sqs:SendMessage', queueArn('some-other-queue')));
    assert.ok(allows(statements, 'sqs:ListQueues', '*'));
    for (const action of [
      'sqs:ReceiveMessage',
      'sqs:DeleteMessage',
      'sqs:PurgeQueue',
      'sqs:SetQueueAttributes',
      'sqs:DeleteQueue',
    ]) {
      for (const name of fleetQueueNames)
        assert.ok(!allows(statements, action, queueArn(name)), `${action} ${name}`);
    }
    const rollout = fleetKeys.rolloutPk('images/a.tar');
    assert.ok(allows(statements, 'dynamodb:PutItem', tableArn, keys(rollout)));
    for (const pk of [fleetKeys.config.pk, fleetKeys.hostPk('i-1')])
      assert.ok(!allows(statements, 'dynamodb:PutItem', tableArn, keys(pk)), pk);
    assert.ok(!allows(statements, 'dynamodb:PutItem', tableArn), 'a request must name its key');
    for (const action of ['dynamodb:DeleteItem', 'dynamodb:Scan', 'dynamodb:GetItem'])
      assert.ok(!allows(statements, action, tableArn, keys(rollout)), action);
    assert.ok(!allows(statements, 's3:GetObject', `${bucketArn}/images/a.tar`));
    assert.ok(
      statements.every((s) => s.Action.every((a) => !a.startsWith('s3:'))),
      'no S3 action at all',
    );
    assert.ok(
      statements.every((s) => s.Action.every((a) => !a.includes('*'))),
      'no wildcard actions',
    );
    const actionsOnStar = statements
      .filter((s) => s.Resource.includes('*'))
      .flatMap((s) => s.Action);
    assert.deepEqual(actionsOnStar, ['sqs:ListQueues']);
  });
});

describe('fleet table', () => {
  const table = json.Resources[tableId]!.Properties!;

  test('on demand, point-in-time recovery, keys pk/sk, GSI byImage on gpk/gsk projecting everything', () => {
    assert.equal(table.BillingMode, 'PAY_PER_REQUEST');
    assert.deepEqual(table.PointInTimeRecoverySpecification, { PointInTimeRecoveryEnabled: true });
    assert.deepEqual(table.KeySchema, [
      { AttributeName: 'pk', KeyType: 'HASH' },
      { AttributeName: 'sk', KeyType: 'RANGE' },
    ]);
    assert.deepEqual(table.GlobalSecondaryIndexes, [
      {
        IndexName: FLEET_GSI,
        KeySchema: [
          { AttributeName: 'gpk', KeyType: 'HASH' },
          { AttributeName: 'gsk', KeyType: 'RANGE' },
        ],
        Projection: { ProjectionType: 'ALL' },
      },
    ]);
  });

  test('the stack writes the CONFIG/DEPLOYMENT item (routes, groups, staleness) on create and update', () => {
    const [[, cr]] = resourcesOfType(json, 'Custom::AWS') as [[string, Record<string, unknown>]];
    for (const phase of ['Create', 'Update']) {
      const call = JSON.parse(concrete(json, cr[phase])) as {
        service: string;
        action: string;
        parameters: { TableName: string; Item: Record<string, never> };
      };
      assert.equal(call.service, 'DynamoDB');
      assert.equal(call.action, 'PutItem');
      assert.equal(call.parameters.TableName, 'thinrelay-fleet');
      const item = fromItem(call.parameters.Item);
      assert.deepEqual(item, deploymentConfigItem(base.config, concrete(json, { Ref: bucketId })));
      assert.deepEqual(item.routes, { 'images/gpu/': ['gpu'] });
      assert.deepEqual(Object.keys(item.groups as object), ['default', 'gpu']);
      assert.equal(item.staleAfterSeconds, 900);
      assert.equal(item.sweepAfterSeconds, 86400);
    }
  });
});

describe('host groups', () => {
  const [ownHost, otherGroupHost] = HOSTS as [(typeof HOSTS)[number], (typeof HOSTS)[number]];

  test("an EC2 group's role: its group's queues (any host id), never another group's, never SendMessage", () => {
    const statements = roleStatements(json, roleIdOf(base, 'default'));
    const mine = [
      hostQueue(ownHost),
      dlq(ownHost),
      'thinrelay-host-default-i-later',
      'thinrelay-dlq-default-i-later',
    ];
    for (const name of mine) {
      for (const action of [
        'sqs:CreateQueue',
        'sqs:SetQueueAttributes',
        'sqs:TagQueue',
        'sqs:GetQueueAttributes',
        'sqs:GetQueueUrl',
        'sqs:ReceiveMessage',
        'sqs:ChangeMessageVisibility',
        'sqs:DeleteMessage',
        'sqs:DeleteQueue',
      ]) {
        assert.ok(allows(statements, action, queueArn(name)), `${action} on ${name}`);
      }
    }
    const others = [
      hostQueue(otherGroupHost),
      dlq(otherGroupHost),
      'thinrelay-host-default_x-i-1',
      'thinrelay-fanout-failed',
      'other-host-default-i-1',
    ];
    for (const name of others) {
      for (const action of [
        'sqs:CreateQueue',
        'sqs:ReceiveMessage',
        'sqs:DeleteQueue',
        'sqs:SetQueueAttributes',
      ])
        assert.ok(!allows(statements, action, queueArn(name)), `${action} on ${name}`);
    }
    for (const name of fleetQueueNames) {
      for (const action of [
        'sqs:SendMessage',
        'sqs:SendMessageBatch',
        'sqs:PurgeQueue',
        'sqs:StartMessageMoveTask',
      ])
        assert.ok(!allows(statements, action, queueArn(name)), `${action} on ${name}`);
    }
    // The deny holds whatever else is attached to the role.
    const withAdmin = [
      ...statements,
      { Effect: 'Allow' as const, Action: ['sqs:*'], Resource: ['*'] },
    ];
    for (const name of [hostQueue(ownHost), dlq(ownHost)])
      assert.ok(!allows(withAdmin, 'sqs:SendMessage', queueArn(name)), `explicit deny on ${name}`);
  });

  test('it reads and lists images under the prefix only, and nothing else of the bucket', () => {
    for (const group of ['default', 'gpu']) {
      const statements = roleStatements(json, roleIdOf(base, group));
      for (const action of ['s3:GetObject', 's3:GetObjectVersion']) {
        assert.ok(allows(statements, action, `${bucketArn}/images/base.tar`));
        assert.ok(!allows(statements, action, `${bucketArn}/secrets/key.tar`));
        assert.ok(!allows(statements, action, `${bucketArn}/imagesX/a.tar`));
        assert.ok(!allows(statements, action, `arn:aws:s3:::other-bucket/images/a.tar`));
      }
      for (const action of ['s3:PutObject', 's3:DeleteObject', 's3:ListBucket']) {
        assert.ok(!allows(statements, action, `${bucketArn}/images/a.tar`), action);
        assert.ok(!allows(statements, action, bucketArn), action);
      }
      // Catch-up sync lists the images prefix, and nothing else of the bucket.
      assert.ok(allows(statements, 's3:ListBucket', bucketArn, { 's3:prefix': 'images/' }));
      assert.ok(!allows(statements, 's3:ListBucket', bucketArn, { 's3:prefix': 'secrets/' }));
      assert.ok(!allows(statements, 's3:ListBucket', bucketArn, { 's3:prefix': '' }));
    }
  });

  test('table: it reads the CONFIG item and writes host items only, never CONFIG or rollouts', () => {
    const statements = roleStatements(json, roleIdOf(base, 'default'));
    assert.ok(allows(statements, 'dynamodb:GetItem', tableArn, keys(fleetKeys.config.pk)));
    for (const action of ['dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'])
      assert.ok(!allows(statements, action, tableArn, keys(fleetKeys.config.pk)), action);
    for (const action of [
      'dynamodb:PutItem',
      'dynamodb:UpdateItem',
      'dynamodb:DeleteItem',
      'dynamodb:Query',
    ])
      assert.ok(allows(statements, action, tableArn, keys(fleetKeys.hostPk(ownHost.id))), action);
    const rollout = fleetKeys.rolloutPk('images/a.tar');
    assert.ok(!allows(statements, 'dynamodb:PutItem', tableArn, keys(rollout)));
    assert.ok(
      !allows(
        statements,
        'dynamodb:BatchWriteItem',
        tableArn,
        keys(fleetKeys.hostPk(ownHost.id), rollout),
      ),
      'one foreign key in a batch denies the batch',
    );
    assert.ok(!allows(statements, 'dynamodb:Scan', tableArn), 'no scans: no key, no access');
    assert.ok(!allows(statements, 'dynamodb:PutItem', tableArn), 'a request must name its key');
    assert.ok(!allows(statements, 'dynamodb:PutItem', `${tableArn}-other`, keys('HOST#x')));
  });

  test('EC2 groups: trusted by ec2.amazonaws.com, one instance profile each', () => {
    for (const group of ['default', 'gpu']) {
      const roleId = roleIdOf(base, group);
      assert.deepEqual(json.Resources[roleId]!.Properties!.AssumeRolePolicyDocument, {
        Version: '2012-10-17',
        Statement: [
          {
            Effect: 'Allow',
            Action: 'sts:AssumeRole',
            Principal: { Service: 'ec2.amazonaws.com' },
          },
        ],
      });
      base.template.hasResourceProperties('AWS::IAM::InstanceProfile', {
        Roles: [{ Ref: roleId }],
      });
    }
    assert.equal(resourcesOfType(json, 'AWS::IAM::InstanceProfile').length, 2);
  });
});

describe('hosts bound to their own names where IAM can see the host', () => {
  const anchor = `arn:aws:rolesanywhere:${REGION}:${ACCOUNT}:trust-anchor/0b7d8f2e-1c3a-4e5f-9a6b-7c8d9e0f1a2b`;
  const broker = `arn:aws:iam::${ACCOUNT}:role/fleet-credential-broker`;
  const mixed = synth({
    ...BASE_CONFIG,
    groups: [
      { name: 'onprem', principal: { type: 'rolesAnywhere', trustAnchorArn: anchor } },
      { name: 'brokered', principal: { type: 'aws', principalArn: broker } },
    ],
  });
  const cases = [
    ['onprem', 'aws:PrincipalTag/x509Subject/CN'],
    ['brokered', 'aws:PrincipalTag/thinrelay-host'],
  ] as const;

  for (const [group, tag] of cases) {
    test(`${group}: only queues and items named by the host's own id (${tag})`, () => {
      const statements = roleStatements(mixed.json, roleIdOf(mixed, group));
      const me = { [tag]: 'web01' };
      const own = queueNames.hostQueue('thinrelay', group, 'web01');
      const ownDlq = queueNames.dlq('thinrelay', group, 'web01');
      const neighbour = queueNames.hostQueue('thinrelay', group, 'web02');
      for (const action of ['sqs:CreateQueue', 'sqs:ReceiveMessage', 'sqs:DeleteQueue']) {
        assert.ok(allows(statements, action, queueArn(own), me), `${action} own`);
        assert.ok(allows(statements, action, queueArn(ownDlq), me), `${action} own DLQ`);
        assert.ok(!allows(statements, action, queueArn(neighbour), me), `${action} neighbour`);
        assert.ok(!allows(statements, action, queueArn(own)), `${action} without the tag`);
      }
      assert.ok(!allows(statements, 'sqs:SendMessage', queueArn(own), me));
      const write = (pk: string, ctx: Record<string, string>) =>
        allows(statements, 'dynamodb:PutItem', tableArn, { ...ctx, ...keys(pk) });
      assert.ok(write(fleetKeys.hostPk('web01'), me));
      assert.ok(!write(fleetKeys.hostPk('web02'), me), "another host's items");
      assert.ok(!write(fleetKeys.hostPk('web01'), {}), 'no tag, no write');
      assert.ok(!write(fleetKeys.hostPk('web01'), { [tag]: '*' }), "a '*' id is no wildcard");
      assert.ok(!write(fleetKeys.config.pk, me));
    });
  }

  test('Roles Anywhere: only certificates of the anchor; one profile for its groups; no instance profiles', () => {
    const trust = mixed.json.Resources[roleIdOf(mixed, 'onprem')]!.Properties!
      .AssumeRolePolicyDocument as {
      Statement: { Action: string | string[]; Principal: unknown; Condition: unknown }[];
    };
    const actions = trust.Statement.flatMap((s) => ([] as string[]).concat(s.Action)).sort();
    assert.deepEqual(actions, ['sts:AssumeRole', 'sts:SetSourceIdentity', 'sts:TagSession']);
    for (const s of trust.Statement) {
      assert.deepEqual(s.Principal, { Service: 'rolesanywhere.amazonaws.com' });
      assert.deepEqual(s.Condition, { ArnEquals: { 'aws:SourceArn': anchor } });
    }
    assert.equal(resourcesOfType(mixed.json, 'AWS::IAM::InstanceProfile').length, 0);
    const [[, profile]] = resourcesOfType(mixed.json, 'AWS::RolesAnywhere::Profile') as [
      [string, Record<string, unknown>],
    ];
    assert.equal((profile.RoleArns as unknown[]).length, 1);
    assert.ok(mixed.json.Outputs![STACK_OUTPUTS.rolesAnywhereProfile]);
  });

  test('a broker principal must tag the session with the host id', () => {
    const trust = mixed.json.Resources[roleIdOf(mixed, 'brokered')]!.Properties!
      .AssumeRolePolicyDocument as { Statement: { Principal: unknown; Condition: unknown }[] };
    for (const s of trust.Statement) {
      assert.deepEqual(s.Principal, { AWS: broker });
      assert.deepEqual(s.Condition, { StringLike: { 'aws:RequestTag/thinrelay-host': '?*' } });
    }
  });

  test('cdk-nag passes for these principals', () => {
    assert.deepEqual(mixed.nagViolations, []);
  });
});

describe('fleet size', () => {
  const groups = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ name: `g${i}`, routes: [`images/g${i}/`] }));
  const count = (n: number) => {
    const s = synth({ ...BASE_CONFIG, groups: groups(n) });
    const types: Record<string, number> = {};
    for (const r of Object.values(s.json.Resources)) types[r.Type] = (types[r.Type] ?? 0) + 1;
    return {
      s,
      total: Object.keys(s.json.Resources).length,
      outputs: Object.keys(s.json.Outputs!).length,
      types,
    };
  };
  const [zero, one, twenty] = [count(0), count(1), count(20)];

  test('no resource, output or alarm per host; each group adds the same three resources and two outputs', () => {
    const perGroup = one.total - zero.total;
    assert.equal(perGroup, 3, 'role, its policy, instance profile');
    assert.equal(twenty.total - zero.total, 20 * perGroup);
    assert.equal(
      twenty.outputs - zero.outputs,
      20 * 2 + 1,
      'role ARN and instance profile, plus the Groups list',
    );
    for (const type of ['AWS::SQS::Queue', 'AWS::CloudWatch::Alarm', 'AWS::Lambda::Function'])
      assert.equal(twenty.types[type], zero.types[type], `${type} does not grow with the fleet`);
    assert.deepEqual(twenty.s.nagViolations, []);
  });

  test('the largest allowed config (50 groups) stays far below 500 resources and 200 outputs', () => {
    const max = count(50);
    assert.ok(max.total < 250, `${max.total} resources`);
    assert.ok(max.outputs < 120, `${max.outputs} outputs`);
  });

  test('a 300-host config in the old format gets the migration message, with its groups written out', () => {
    const hosts = Array.from({ length: 300 }, (_, i) => ({
      name: `web${i}`,
      group: i % 2 ? 'gpu' : 'default',
    }));
    assert.throws(
      () => parseConfig({ hosts, hostPrincipal: { type: 'ec2' } }),
      /per-host config format is gone.*"groups": \[\{"name":"default","principal":\{"type":"ec2"\}\},\{"name":"gpu","principal":\{"type":"ec2"\}\}\]/,
    );
  });
});

describe('fleet sweep', () => {
  const fn = json.Resources[sweepId]!.Properties!;

  test('Node.js 26 on arm64, reads FLEET_TABLE, runs on a schedule', () => {
    assert.equal(fn.Runtime, 'nodejs26.x');
    assert.deepEqual(fn.Architectures, ['arm64']);
    assert.deepEqual((fn.Environment as { Variables: Record<string, unknown> }).Variables, {
      FLEET_TABLE: { Ref: tableId },
      POWERTOOLS_SERVICE_NAME: 'thinrelay-sweep',
      POWERTOOLS_METRICS_NAMESPACE: 'thinrelay',
    });
    base.template.hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'rate(5 minutes)',
      State: 'ENABLED',
      Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [sweepId, 'Arn'] } })],
    });
  });

  test('its role reads the table, removes host items, superseded rollouts and host queues, sends nothing', () => {
    const roleId = (fn.Role as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
    const statements = roleStatements(json, roleId);
    assert.ok(allows(statements, 'dynamodb:Scan', tableArn));
    for (const action of [
      'dynamodb:DeleteItem',
      'dynamodb:UpdateItem',
      'dynamodb:BatchWriteItem',
    ]) {
      assert.ok(allows(statements, action, tableArn, keys(fleetKeys.hostPk('i-1'))), action);
      assert.ok(!allows(statements, action, tableArn, keys(fleetKeys.config.pk)), action);
    }
    const rollout = keys(fleetKeys.rolloutPk('images/a.tar'));
    assert.ok(
      allows(statements, 'dynamodb:DeleteItem', tableArn, rollout),
      'prunes superseded rollouts',
    );
    assert.ok(allows(statements, 'dynamodb:BatchWriteItem', tableArn, rollout));
    assert.ok(!allows(statements, 'dynamodb:UpdateItem', tableArn, rollout), 'never rewrites one');
    assert.ok(!allows(statements, 'dynamodb:PutItem', tableArn, keys(fleetKeys.hostPk('i-1'))));
    for (const h of HOSTS) {
      for (const name of [hostQueue(h), dlq(h)]) {
        assert.ok(allows(statements, 'sqs:DeleteQueue', queueArn(name)));
        assert.ok(allows(statements, 'sqs:GetQueueAttributes', queueArn(name)));
        for (const action of ['sqs:SendMessage', 'sqs:ReceiveMessage', 'sqs:PurgeQueue'])
          assert.ok(!allows(statements, action, queueArn(name)), action);
      }
    }
    assert.ok(!allows(statements, 'sqs:DeleteQueue', queueArn('thinrelay-fanout-failed')));
  });
});

describe('operator policy', () => {
  const policyId = base.stack.getLogicalId(base.stack.operator.policy.node.defaultChild as never);
  const statements = managedPolicyStatements(json, policyId);

  test('redrive: move tasks on every host DLQ, back into host queues', () => {
    for (const h of HOSTS) {
      for (const action of [
        'sqs:StartMessageMoveTask',
        'sqs:ListMessageMoveTasks',
        'sqs:CancelMessageMoveTask',
        'sqs:ReceiveMessage',
        'sqs:DeleteMessage',
        'sqs:GetQueueAttributes',
      ]) {
        assert.ok(allows(statements, action, queueArn(dlq(h))), `${action} on ${dlq(h)}`);
      }
      assert.ok(allows(statements, 'sqs:SendMessage', queueArn(hostQueue(h))));
      assert.ok(
        !allows(statements, 'sqs:SendMessage', queueArn(dlq(h))),
        'nothing is sent into DLQs',
      );
      assert.ok(!allows(statements, 'sqs:StartMessageMoveTask', queueArn(hostQueue(h))));
      assert.ok(
        !allows(statements, 'sqs:DeleteMessage', queueArn(hostQueue(h))),
        "host queues are the agents'",
      );
    }
    for (const action of ['sqs:PurgeQueue', 'sqs:SetQueueAttributes']) {
      for (const name of fleetQueueNames)
        assert.ok(!allows(statements, action, queueArn(name)), `${action} ${name}`);
    }
  });

  test('replay: read the failed-events queue, invoke the fan-out function', () => {
    const failed = queueArn('thinrelay-fanout-failed');
    const fnArn = `arn:aws:lambda:${REGION}:${ACCOUNT}:function:thinrelay-fanout`;
    assert.ok(allows(statements, 'sqs:ReceiveMessage', failed));
    assert.ok(allows(statements, 'sqs:DeleteMessage', failed));
    assert.ok(allows(statements, 'lambda:InvokeFunction', fnArn));
    assert.ok(!allows(statements, 'lambda:UpdateFunctionCode', fnArn));
  });

  test('fleet status and forget: read the table and its index, delete host queues and host items only', () => {
    for (const action of ['dynamodb:Query', 'dynamodb:Scan', 'dynamodb:GetItem']) {
      assert.ok(allows(statements, action, tableArn), action);
      assert.ok(allows(statements, action, `${tableArn}/index/${FLEET_GSI}`), action);
    }
    for (const h of HOSTS) {
      assert.ok(allows(statements, 'sqs:DeleteQueue', queueArn(hostQueue(h))));
      assert.ok(allows(statements, 'sqs:DeleteQueue', queueArn(dlq(h))));
      assert.ok(allows(statements, 'dynamodb:DeleteItem', tableArn, keys(fleetKeys.hostPk(h.id))));
    }
    assert.ok(!allows(statements, 'sqs:DeleteQueue', queueArn('thinrelay-fanout-failed')));
    for (const pk of [fleetKeys.config.pk, fleetKeys.rolloutPk('images/a.tar')])
      assert.ok(!allows(statements, 'dynamodb:DeleteItem', tableArn, keys(pk)), pk);
    for (const action of ['dynamodb:PutItem', 'dynamodb:UpdateItem'])
      assert.ok(!allows(statements, action, tableArn, keys(fleetKeys.hostPk('i-1'))), action);
  });
});

describe('alarms', () => {
  const alarms = resourcesOfType(json, 'AWS::CloudWatch::Alarm').map(([, p]) => p);
  const byName = (name: string) => {
    const a = alarms.find((p) => p.AlarmName === name);
    assert.ok(a, `alarm ${name}`);
    return a;
  };
  const topicRef = { Ref: findId(json, 'AWS::SNS::Topic', 'TopicName', 'thinrelay-alarms') };

  test('one fleet alarm per concern on the sweep metrics, none per host', () => {
    const fleet: [string, string, number][] = [
      ['thinrelay-fleet-stale-hosts', 'StaleHosts', 0],
      ['thinrelay-fleet-failed-images', 'HostsWithFailedImage', 0],
      ['thinrelay-fleet-dlq-not-empty', 'DlqMessages', 0],
      ['thinrelay-fleet-rollout-stuck', 'OldestUnfinishedRolloutSeconds', 3600],
    ];
    for (const [name, metric, threshold] of fleet) {
      const a = byName(name);
      assert.equal(a.Namespace, 'thinrelay');
      assert.equal(a.MetricName, metric);
      assert.deepEqual(a.Dimensions, [{ Name: 'service', Value: 'thinrelay-sweep' }]);
      assert.equal(a.Threshold, threshold);
      assert.equal(a.ComparisonOperator, 'GreaterThanThreshold');
      assert.deepEqual(a.AlarmActions, [topicRef]);
      assert.deepEqual(a.OKActions, [topicRef]);
    }
    const unrecorded = byName('thinrelay-fanout-rollouts-unrecorded');
    assert.deepEqual(unrecorded.Dimensions, [{ Name: 'service', Value: 'thinrelay-fanout' }]);
    assert.equal(unrecorded.MetricName, 'RolloutRecordFailed');
    const missing = byName('thinrelay-sweep-not-running');
    assert.equal(missing.TreatMissingData, 'breaching');
    assert.equal(byName('thinrelay-sweep-errors').MetricName, 'Errors');
    assert.ok(alarms.every((a) => !String(a.AlarmName).includes('-dlq-default-')));
  });

  test("the Lambda's errors and throttles, and the failed-events queue", () => {
    for (const [name, metric] of [
      ['thinrelay-fanout-errors', 'Errors'],
      ['thinrelay-fanout-throttles', 'Throttles'],
    ] as const) {
      const a = byName(name);
      assert.equal(a.Namespace, 'AWS/Lambda');
      assert.equal(a.MetricName, metric);
      assert.deepEqual(a.Dimensions, [{ Name: 'FunctionName', Value: { Ref: functionId } }]);
      assert.deepEqual(a.AlarmActions, [topicRef]);
    }
    const failed = byName('thinrelay-fanout-failed-not-empty');
    assert.equal(failed.MetricName, 'ApproximateNumberOfMessagesVisible');
    assert.equal(alarms.length, 10);
  });

  test('the alarm topic is encrypted with a rotating key CloudWatch may use, TLS only, mailed', () => {
    base.template.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'email',
      Endpoint: 'ops@example.com',
    });
    base.template.hasResourceProperties('AWS::KMS::Key', {
      EnableKeyRotation: true,
      KeyPolicy: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Principal: { Service: 'cloudwatch.amazonaws.com' },
            Action: ['kms:Decrypt', 'kms:GenerateDataKey*'],
          }),
        ]),
      },
    });
  });
});

describe('outputs', () => {
  test('per group: role ARN and instance profile; plus what agent.env needs', () => {
    const outputs = json.Outputs!;
    for (const group of ['default', 'gpu']) {
      const k = groupOutputKeys(group);
      assert.deepEqual(outputs[k.roleArn]!.Value, { 'Fn::GetAtt': [roleIdOf(base, group), 'Arn'] });
      assert.ok(outputs[k.instanceProfile]);
    }
    assert.deepEqual(outputs[STACK_OUTPUTS.bucket]!.Value, { Ref: bucketId });
    assert.deepEqual(outputs[STACK_OUTPUTS.fleetTable]!.Value, { Ref: tableId });
    assert.deepEqual(outputs[STACK_OUTPUTS.region]!.Value, { Ref: 'AWS::Region' });
    assert.equal(outputs[STACK_OUTPUTS.groups]!.Value, 'default,gpu');
  });

  test("the deployed outputs, as cdk deploy --outputs-file writes them, give each group's agent.env", () => {
    const file = JSON.stringify({
      Thinrelay: Object.fromEntries(
        Object.entries(json.Outputs!).map(([k, o]) => [k, concrete(json, o.Value)]),
      ),
    });
    const env = agentEnv(stackOutputs(file, null), 'gpu', { backend: 'devmapper' });
    assert.match(env, /^THINRELAY_GROUP=gpu$/m);
    assert.match(env, /^THINRELAY_FLEET_TABLE=thinrelay-fleet$/m);
    assert.match(env, new RegExp(`^THINRELAY_BUCKET=${concrete(json, { Ref: bucketId })}$`, 'm'));
    assert.match(env, new RegExp(`^AWS_REGION=${REGION}$`, 'm'));
    assert.match(env, /^THINRELAY_BACKEND=devmapper$/m);
    assert.doesNotMatch(env, /QUEUE_URL/);
    assert.match(env, new RegExp(`act as arn:aws:iam::${ACCOUNT}:role/${roleIdOf(base, 'gpu')}`));
  });
});

describe('cdk-nag', () => {
  test('AwsSolutions checks pass; every acknowledgement has a reason', () => {
    assert.deepEqual(base.nagViolations, []);
    assert.ok(base.stack.nagAcknowledgements.length > 0);
    for (const a of base.stack.nagAcknowledgements)
      assert.ok(a.reason.length >= 40, `${a.id}: ${a.reason}`);
  });

  test('the checks do find problems: an unencrypted queue without DLQ or TLS policy is reported', () => {
    const app = new App();
    const stack = new Stack(app, 'Bad');
    new sqs.Queue(stack, 'Plain', { encryption: sqs.QueueEncryption.UNENCRYPTED });
    const found = new AwsSolutionsChecks()
      .validateScope(app)
      .violations.map((v) => v.ruleName)
      .sort();
    assert.deepEqual(found, ['AwsSolutions-SQS2', 'AwsSolutions-SQS3', 'AwsSolutions-SQS4']);
  });
});

describe('bundled functions', () => {
  test('synth bundles both handlers locally with esbuild; the bundles load; the fan-out handles a notification', async () => {
    const outdir = mkdtempSync(join(tmpdir(), 'thinrelay-cdk-'));
    try {
      const bundled = synth(BASE_CONFIG, { bundle: true, outdir });
      const entryOf = (fn: { node: { findChild(id: string): unknown } }) => {
        const asset = fn.node.findChild('Code') as s3assets.Asset;
        const assetDir = join(outdir, asset.assetPath);
        assert.deepEqual(
          readdirSync(assetDir),
          ['index.mjs'],
          'one file: the SDK and Powertools are inside',
        );
        const entry = join(assetDir, 'index.mjs');
        const size = statSync(entry).size;
        assert.ok(size > 50_000 && size < 5_000_000, `bundle is ${size} bytes`);
        return entry;
      };
      const sweepEntry = entryOf(bundled.stack.sweep.function);
      const sweepMod = (await import(pathToFileURL(sweepEntry).href)) as { handler: unknown };
      assert.equal(typeof sweepMod.handler, 'function');

      const fnId = findId(
        bundled.json,
        'AWS::Lambda::Function',
        'FunctionName',
        'thinrelay-fanout',
      );
      const entry = entryOf(bundled.stack.fanout.function);
      const env = (
        bundled.json.Resources[fnId]!.Properties!.Environment as {
          Variables: Record<string, unknown>;
        }
      ).Variables;
      const set = {
        ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, concrete(bundled.json, v)])),
        AWS_REGION: REGION,
      };
      const saved = Object.fromEntries(Object.keys(set).map((k) => [k, process.env[k]]));
      try {
        Object.assign(process.env, set);
        const mod = (await import(pathToFileURL(entry).href)) as {
          handler: (e: unknown, context: unknown) => Promise<void>;
        };
        assert.equal(typeof mod.handler, 'function');
        // A notification with nothing under the images prefix: config parsed, nothing sent.
        const record = {
          eventName: 'ObjectCreated:Put',
          eventTime: '2026-11-23T10:00:00.000Z',
          s3: {
            bucket: { name: concrete(bundled.json, env.IMAGE_BUCKETS) },
            object: { key: 'elsewhere/a.tar', size: 1, eTag: 'e', sequencer: '0A' },
          },
        };
        // Lambda always passes a context (Powertools reads it for every log line).
        const context = {
          awsRequestId: 'req-bundle',
          functionName: 'thinrelay-fanout',
          functionVersion: '$LATEST',
          invokedFunctionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:thinrelay-fanout',
          memoryLimitInMB: '256',
        };
        await mod.handler({ Records: [record] }, context);
      } finally {
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      }
    } finally {
      rmSync(outdir, { recursive: true, force: true });
    }
  });
});

describe('alarm targets', () => {
  test('an existing topic by ARN: alarms notify it, no topic or key is created', () => {
    const topicArn = `arn:aws:sns:${REGION}:${ACCOUNT}:ops-pager`;
    const paged = synth(
      { ...BASE_CONFIG, alarms: { topicArn } },
      { env: { account: ACCOUNT, region: REGION } },
    );
    assert.equal(resourcesOfType(paged.json, 'AWS::SNS::Topic').length, 0);
    assert.equal(resourcesOfType(paged.json, 'AWS::KMS::Key').length, 0);
    for (const [, a] of resourcesOfType(paged.json, 'AWS::CloudWatch::Alarm'))
      assert.deepEqual(a.AlarmActions, [topicArn]);
    assert.deepEqual(
      paged.nagViolations,
      [],
      'cdk-nag passes with a concrete account and region too',
    );
  });

  test('no alarm target configured: the alarms still exist, with no actions', () => {
    const quiet = synth({ ...BASE_CONFIG, alarms: {} });
    const alarms = resourcesOfType(quiet.json, 'AWS::CloudWatch::Alarm');
    assert.equal(alarms.length, 10);
    for (const [, a] of alarms) assert.equal(a.AlarmActions, undefined);
    assert.deepEqual(quiet.nagViolations, []);
  });

  test('an empty fleet (no groups): no group resources, no Groups output, checks still pass', () => {
    const empty = synth({ ...BASE_CONFIG, groups: [] });
    assert.equal(resourcesOfType(empty.json, 'AWS::IAM::InstanceProfile').length, 0);
    assert.equal(empty.json.Outputs![STACK_OUTPUTS.groups], undefined);
    assert.deepEqual(empty.nagViolations, []);
  });
});
