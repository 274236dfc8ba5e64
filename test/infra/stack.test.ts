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
import { names } from '../../infra/lib/config.js';
import { agentEnv, hostOutputKeys, STACK_OUTPUTS, stackOutputs } from '../../infra/lib/outputs.js';
import { loadConfig } from '../../lambda/src/config.js';
import { targetsFor } from '../../lambda/src/fanout.js';
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

const HOSTS = [
  { name: 'web01', group: 'default' },
  { name: 'gpu01', group: 'gpu' },
];
const hostQueue = (h: (typeof HOSTS)[number]) => names.hostQueue(base.config, h);
const dlq = (h: (typeof HOSTS)[number]) => names.dlq(base.config, h);
const queueId = (s: Synth, name: string) => findId(s.json, 'AWS::SQS::Queue', 'QueueName', name);
const roleIdOf = (s: Synth, host: string) => {
  const hq = s.stack.hosts.find((h) => h.host.name === host);
  assert.ok(hq, `host ${host}`);
  return s.stack.getLogicalId(hq.role.node.defaultChild as never);
};
const bucketId = findId(json, 'AWS::S3::Bucket', 'VersioningConfiguration', { Status: 'Enabled' });
const bucketArn = concrete(json, { 'Fn::GetAtt': [bucketId, 'Arn'] });
const functionId = findId(json, 'AWS::Lambda::Function', 'FunctionName', 'thinrelay-fanout');
const allQueueNames = resourcesOfType(json, 'AWS::SQS::Queue').map(
  ([, p]) => p.QueueName as string,
);

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

  test('Node.js 22 on arm64, bundled ESM handler', () => {
    assert.equal(fn.Runtime, 'nodejs22.x');
    assert.deepEqual(fn.Architectures, ['arm64']);
    assert.equal(fn.Handler, 'index.handler');
  });

  test('its environment is what lambda/src/config.ts reads, and it parses there', () => {
    assert.deepEqual(env, {
      HOST_QUEUE_PREFIX: 'thinrelay-host-',
      ROUTES: '{"images/gpu/":["gpu"]}',
      IMAGE_BUCKETS: { Ref: bucketId },
      IMAGE_PREFIX: 'images/',
      IMAGE_SUFFIXES: '.tar,.tar.gz,.tgz',
      FANOUT_CONCURRENCY: '16',
      QUEUE_DISCOVERY_TTL_SECONDS: '60',
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
  });

  test("the Lambda's discovery and routing find exactly the host queues, by group", () => {
    const urls = allQueueNames.map((n) => `https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/${n}`);
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
    assert.deepEqual(to('images/gpu/cuda.tar'), ['thinrelay-host-gpu-gpu01']);
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

  test('its role sends only to host queues (and its failure destination), reads nothing from S3', () => {
    const roleId = (fn.Role as { 'Fn::GetAtt': [string, string] })['Fn::GetAtt'][0];
    const statements = roleStatements(json, roleId);
    for (const h of HOSTS)
      assert.ok(allows(statements, 'sqs:SendMessage', queueArn(hostQueue(h))), hostQueue(h));
    assert.ok(
      allows(statements, 'sqs:SendMessage', queueArn('thinrelay-host-default-added-later')),
    );
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
    ]) {
      for (const name of allQueueNames)
        assert.ok(!allows(statements, action, queueArn(name)), `${action} ${name}`);
    }
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

describe('host queues', () => {
  test('one queue and DLQ per host: SSE, TLS only, redrive policy both ways, DLQ outlives its source', () => {
    for (const h of HOSTS) {
      const q = json.Resources[queueId(base, hostQueue(h))]!.Properties!;
      const d = json.Resources[queueId(base, dlq(h))]!.Properties!;
      assert.equal(q.SqsManagedSseEnabled, true);
      assert.equal(d.SqsManagedSseEnabled, true);
      assert.deepEqual(q.RedrivePolicy, {
        deadLetterTargetArn: { 'Fn::GetAtt': [queueId(base, dlq(h)), 'Arn'] },
        maxReceiveCount: 5,
      });
      assert.equal(q.MessageRetentionPeriod, 4 * 86400);
      assert.equal(d.MessageRetentionPeriod, 14 * 86400);
      assert.ok(d.MessageRetentionPeriod > q.MessageRetentionPeriod);
      assert.equal(q.ReceiveMessageWaitTimeSeconds, 20);
      const allow = d.RedriveAllowPolicy as {
        redrivePermission: string;
        sourceQueueArns: unknown[];
      };
      assert.equal(allow.redrivePermission, 'byQueue');
      assert.deepEqual(
        allow.sourceQueueArns.map((a) => concrete(json, a)),
        [queueArn(hostQueue(h))],
        'only its own source queue may use this DLQ',
      );
    }
    for (const name of allQueueNames) {
      base.template.hasResourceProperties('AWS::SQS::QueuePolicy', {
        Queues: [{ Ref: queueId(base, name) }],
        PolicyDocument: {
          Statement: Match.arrayWith([
            Match.objectLike({
              Effect: 'Deny',
              Condition: { Bool: { 'aws:SecureTransport': 'false' } },
            }),
          ]),
        },
      });
    }
  });

  test("a host's role reads images and consumes its own queue, and nothing else", () => {
    for (const h of HOSTS) {
      const statements = roleStatements(json, roleIdOf(base, h.name));
      const own = queueArn(hostQueue(h));
      for (const action of [
        'sqs:ReceiveMessage',
        'sqs:ChangeMessageVisibility',
        'sqs:DeleteMessage',
        'sqs:GetQueueAttributes',
      ]) {
        assert.ok(allows(statements, action, own), `${h.name} ${action} on own queue`);
      }
      for (const action of ['s3:GetObject', 's3:GetObjectVersion']) {
        assert.ok(
          allows(statements, action, `${bucketArn}/images/base.tar`),
          `${h.name} ${action}`,
        );
        assert.ok(
          allows(statements, action, `${bucketArn}/images/gpu/cuda.tar`),
          `${h.name} ${action}`,
        );
        assert.ok(
          !allows(statements, action, `${bucketArn}/secrets/key.tar`),
          'outside the prefix',
        );
        assert.ok(
          !allows(statements, action, `${bucketArn}/imagesX/a.tar`),
          'a sibling of the prefix',
        );
        assert.ok(
          !allows(statements, action, `arn:aws:s3:::other-bucket/images/a.tar`),
          'another bucket',
        );
      }
      for (const action of [
        's3:PutObject',
        's3:DeleteObject',
        's3:ListBucket',
        's3:PutBucketPolicy',
      ]) {
        assert.ok(!allows(statements, action, `${bucketArn}/images/a.tar`), action);
        assert.ok(!allows(statements, action, bucketArn), action);
      }
      for (const name of allQueueNames) {
        for (const action of [
          'sqs:SendMessage',
          'sqs:SendMessageBatch',
          'sqs:PurgeQueue',
          'sqs:SetQueueAttributes',
          'sqs:StartMessageMoveTask',
        ]) {
          assert.ok(
            !allows(statements, action, queueArn(name)),
            `${h.name} must not ${action} on ${name}`,
          );
        }
        if (name !== hostQueue(h)) {
          for (const action of [
            'sqs:ReceiveMessage',
            'sqs:DeleteMessage',
            'sqs:ChangeMessageVisibility',
          ]) {
            assert.ok(
              !allows(statements, action, queueArn(name)),
              `${h.name} must not ${action} on ${name}`,
            );
          }
        }
      }
      assert.ok(
        statements.every((s) => s.Action.every((a) => !a.includes('*'))),
        'no wildcard actions',
      );
      assert.ok(
        statements.every((s) => !s.Resource.includes('*')),
        'no "*" resources',
      );
    }
  });

  test('EC2 hosts: trusted by ec2.amazonaws.com, one instance profile each', () => {
    for (const h of HOSTS) {
      const roleId = roleIdOf(base, h.name);
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
    assert.equal(resourcesOfType(json, 'AWS::IAM::InstanceProfile').length, HOSTS.length);
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
    for (const action of ['sqs:PurgeQueue', 'sqs:DeleteQueue', 'sqs:SetQueueAttributes']) {
      for (const name of allQueueNames)
        assert.ok(!allows(statements, action, queueArn(name)), `${action} ${name}`);
    }
  });

  test('replay: read the failed-events queue, invoke the fan-out function', () => {
    const failed = queueArn('thinrelay-fanout-failed');
    assert.ok(allows(statements, 'sqs:ReceiveMessage', failed));
    assert.ok(allows(statements, 'sqs:DeleteMessage', failed));
    assert.ok(
      allows(
        statements,
        'lambda:InvokeFunction',
        `arn:aws:lambda:${REGION}:${ACCOUNT}:function:thinrelay-fanout`,
      ),
    );
    assert.ok(
      !allows(
        statements,
        'lambda:UpdateFunctionCode',
        `arn:aws:lambda:${REGION}:${ACCOUNT}:function:thinrelay-fanout`,
      ),
    );
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

  test('each DLQ, the failed-events queue: any visible message', () => {
    for (const name of [...HOSTS.map(dlq), 'thinrelay-fanout-failed']) {
      const a = byName(`${name}-not-empty`);
      assert.equal(a.Namespace, 'AWS/SQS');
      assert.equal(a.MetricName, 'ApproximateNumberOfMessagesVisible');
      assert.deepEqual(a.Dimensions, [
        { Name: 'QueueName', Value: { 'Fn::GetAtt': [queueId(base, name), 'QueueName'] } },
      ]);
      assert.equal(a.Threshold, 0);
      assert.equal(a.ComparisonOperator, 'GreaterThanThreshold');
      assert.equal(a.TreatMissingData, 'notBreaching');
      assert.deepEqual(a.AlarmActions, [topicRef]);
      assert.ok(
        (a.AlarmDescription as string).includes('redrive') ||
          (a.AlarmDescription as string).includes('replay'),
      );
    }
  });

  test("the Lambda's errors and throttles", () => {
    for (const [name, metric] of [
      ['thinrelay-fanout-errors', 'Errors'],
      ['thinrelay-fanout-throttles', 'Throttles'],
    ] as const) {
      const a = byName(name);
      assert.equal(a.Namespace, 'AWS/Lambda');
      assert.equal(a.MetricName, metric);
      assert.deepEqual(a.Dimensions, [{ Name: 'FunctionName', Value: { Ref: functionId } }]);
      assert.equal(a.Threshold, 0);
      assert.equal(a.ComparisonOperator, 'GreaterThanThreshold');
      assert.deepEqual(a.AlarmActions, [topicRef]);
      assert.deepEqual(a.OKActions, [topicRef]);
    }
    assert.equal(alarms.length, HOSTS.length + 3);
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
    base.template.hasResourceProperties('AWS::SNS::TopicPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Deny',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
        ]),
      },
    });
  });
});

describe('outputs', () => {
  test('per host: queue URL, DLQ URL, role ARN, instance profile; plus what agent.env needs', () => {
    const outputs = json.Outputs!;
    for (const h of HOSTS) {
      const keys = hostOutputKeys(h.name);
      assert.deepEqual(outputs[keys.queueUrl]!.Value, { Ref: queueId(base, hostQueue(h)) });
      assert.deepEqual(outputs[keys.dlqUrl]!.Value, { Ref: queueId(base, dlq(h)) });
      assert.deepEqual(outputs[keys.roleArn]!.Value, {
        'Fn::GetAtt': [roleIdOf(base, h.name), 'Arn'],
      });
      assert.ok(outputs[keys.instanceProfile]);
    }
    assert.deepEqual(outputs[STACK_OUTPUTS.bucket]!.Value, { Ref: bucketId });
    assert.deepEqual(outputs[STACK_OUTPUTS.region]!.Value, { Ref: 'AWS::Region' });
    assert.equal(outputs[STACK_OUTPUTS.hosts]!.Value, 'web01,gpu01');
  });

  test("the deployed outputs, as cdk deploy --outputs-file writes them, give each host's agent.env", () => {
    const file = JSON.stringify({
      Thinrelay: Object.fromEntries(
        Object.entries(json.Outputs!).map(([k, o]) => [k, concrete(json, o.Value)]),
      ),
    });
    const env = agentEnv(stackOutputs(file, null), 'gpu01', { backend: 'devmapper' });
    assert.match(
      env,
      new RegExp(
        `^THINRELAY_QUEUE_URL=https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/thinrelay-host-gpu-gpu01$`,
        'm',
      ),
    );
    assert.match(
      env,
      new RegExp(
        `^THINRELAY_DLQ_URL=https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/thinrelay-dlq-gpu-gpu01$`,
        'm',
      ),
    );
    assert.match(env, new RegExp(`^THINRELAY_BUCKET=${concrete(json, { Ref: bucketId })}$`, 'm'));
    assert.match(env, new RegExp(`^AWS_REGION=${REGION}$`, 'm'));
    assert.match(env, /^THINRELAY_BACKEND=devmapper$/m);
    assert.match(env, new RegExp(`act as arn:aws:iam::${ACCOUNT}:role/${roleIdOf(base, 'gpu01')}`));
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

describe('bundled function', () => {
  test('synth bundles the handler locally with esbuild; the bundle loads and handles a notification', async () => {
    const outdir = mkdtempSync(join(tmpdir(), 'thinrelay-cdk-'));
    try {
      const bundled = synth(BASE_CONFIG, { bundle: true, outdir });
      const fnId = findId(
        bundled.json,
        'AWS::Lambda::Function',
        'FunctionName',
        'thinrelay-fanout',
      );
      const asset = bundled.stack.fanout.function.node.findChild('Code') as s3assets.Asset;
      const assetDir = join(outdir, asset.assetPath);
      const entry = join(assetDir, 'index.mjs');
      const size = statSync(entry).size;
      assert.ok(size > 50_000 && size < 5_000_000, `bundle is ${size} bytes`);
      assert.deepEqual(
        readdirSync(assetDir),
        ['index.mjs'],
        'one file: the SDK and Powertools are inside',
      );
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
          handler: (e: unknown) => Promise<void>;
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
        await mod.handler({ Records: [record] });
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

describe('fleet changes', () => {
  const grown = synth({
    ...BASE_CONFIG,
    hosts: [...BASE_CONFIG.hosts, { name: 'web02', group: 'default' }],
  });

  test('adding a host adds exactly its queue, DLQ, role and alarm, and changes nothing else', () => {
    const before = json.Resources;
    const after = grown.json.Resources;
    for (const [id, r] of Object.entries(before)) {
      assert.deepEqual(after[id], r, `resource ${id} changed`);
    }
    const added = Object.keys(after).filter((id) => !(id in before));
    const types = added.map((id) => after[id]!.Type).sort();
    assert.deepEqual(types, [
      'AWS::CloudWatch::Alarm',
      'AWS::IAM::InstanceProfile',
      'AWS::IAM::Policy',
      'AWS::IAM::Role',
      'AWS::SQS::Queue',
      'AWS::SQS::Queue',
      'AWS::SQS::QueuePolicy',
      'AWS::SQS::QueuePolicy',
    ]);
    const queueNames = added
      .map((id) => after[id]!.Properties?.QueueName)
      .filter(Boolean)
      .sort();
    assert.deepEqual(queueNames, ['thinrelay-dlq-default-web02', 'thinrelay-host-default-web02']);
    const alarm = added.map((id) => after[id]!).find((r) => r.Type === 'AWS::CloudWatch::Alarm');
    assert.equal(alarm?.Properties?.AlarmName, 'thinrelay-dlq-default-web02-not-empty');
    const newOutputs = Object.keys(grown.json.Outputs!)
      .filter((k) => !(k in json.Outputs!))
      .sort();
    assert.deepEqual(newOutputs, Object.values(hostOutputKeys('web02')).sort());
    assert.deepEqual(grown.nagViolations, []);
  });

  test("the new host's role cannot touch the existing hosts' queues, nor they its", () => {
    const newQueue = queueArn('thinrelay-host-default-web02');
    const mine = roleStatements(grown.json, roleIdOf(grown, 'web02'));
    assert.ok(allows(mine, 'sqs:ReceiveMessage', newQueue));
    for (const h of HOSTS) {
      assert.ok(!allows(mine, 'sqs:ReceiveMessage', queueArn(hostQueue(h))));
      assert.ok(
        !allows(
          roleStatements(grown.json, roleIdOf(grown, h.name)),
          'sqs:ReceiveMessage',
          newQueue,
        ),
      );
    }
  });
});

describe('other principals and alarm targets', () => {
  const anchor = `arn:aws:rolesanywhere:${REGION}:${ACCOUNT}:trust-anchor/0b7d8f2e-1c3a-4e5f-9a6b-7c8d9e0f1a2b`;
  const topicArn = `arn:aws:sns:${REGION}:${ACCOUNT}:ops-pager`;
  const onPrem = synth(
    {
      ...BASE_CONFIG,
      alarms: { topicArn },
      hostPrincipal: { type: 'rolesAnywhere', trustAnchorArn: anchor },
    },
    { env: { account: ACCOUNT, region: REGION } },
  );

  test('Roles Anywhere: only a certificate from the anchor with CN = host name; one profile; no instance profiles', () => {
    for (const h of HOSTS) {
      const trust = onPrem.json.Resources[roleIdOf(onPrem, h.name)]!.Properties!
        .AssumeRolePolicyDocument as {
        Statement: { Action: string | string[]; Principal: unknown; Condition: unknown }[];
      };
      const actions = trust.Statement.flatMap((s) => ([] as string[]).concat(s.Action)).sort();
      assert.deepEqual(actions, ['sts:AssumeRole', 'sts:SetSourceIdentity', 'sts:TagSession']);
      for (const s of trust.Statement) {
        assert.deepEqual(s.Principal, { Service: 'rolesanywhere.amazonaws.com' });
        assert.deepEqual(s.Condition, {
          ArnEquals: { 'aws:SourceArn': anchor },
          StringEquals: { 'aws:PrincipalTag/x509Subject/CN': h.name },
        });
      }
    }
    assert.equal(resourcesOfType(onPrem.json, 'AWS::IAM::InstanceProfile').length, 0);
    const [[, profile]] = resourcesOfType(onPrem.json, 'AWS::RolesAnywhere::Profile') as [
      [string, Record<string, unknown>],
    ];
    assert.equal((profile.RoleArns as unknown[]).length, HOSTS.length);
    assert.ok(onPrem.json.Outputs![STACK_OUTPUTS.rolesAnywhereProfile]);
  });

  test('an existing topic by ARN: alarms notify it, no topic or key is created', () => {
    assert.equal(resourcesOfType(onPrem.json, 'AWS::SNS::Topic').length, 0);
    assert.equal(resourcesOfType(onPrem.json, 'AWS::KMS::Key').length, 0);
    for (const [, a] of resourcesOfType(onPrem.json, 'AWS::CloudWatch::Alarm')) {
      assert.deepEqual(a.AlarmActions, [topicArn]);
    }
  });

  test('cdk-nag passes with a concrete account and region too', () => {
    assert.deepEqual(onPrem.nagViolations, []);
  });

  test('an IAM principal: every host role trusts it, no instance profiles', () => {
    const broker = `arn:aws:iam::${ACCOUNT}:role/fleet-credential-broker`;
    const brokered = synth({
      ...BASE_CONFIG,
      hostPrincipal: { type: 'aws', principalArn: broker },
    });
    for (const h of HOSTS) {
      assert.deepEqual(
        brokered.json.Resources[roleIdOf(brokered, h.name)]!.Properties!.AssumeRolePolicyDocument,
        {
          Version: '2012-10-17',
          Statement: [{ Effect: 'Allow', Action: 'sts:AssumeRole', Principal: { AWS: broker } }],
        },
      );
    }
    assert.equal(resourcesOfType(brokered.json, 'AWS::IAM::InstanceProfile').length, 0);
    assert.deepEqual(brokered.nagViolations, []);
  });

  test('an empty fleet: no host resources, no Hosts output, checks still pass', () => {
    const empty = synth({ ...BASE_CONFIG, routes: {}, hosts: [] });
    const queues = resourcesOfType(empty.json, 'AWS::SQS::Queue').map(([, p]) => p.QueueName);
    assert.deepEqual(queues, ['thinrelay-fanout-failed']);
    assert.equal(resourcesOfType(empty.json, 'AWS::IAM::InstanceProfile').length, 0);
    assert.equal(empty.json.Outputs![STACK_OUTPUTS.hosts], undefined);
    assert.deepEqual(empty.nagViolations, []);
  });

  test('no alarm target configured: the alarms still exist, with no actions', () => {
    const quiet = synth({ ...BASE_CONFIG, alarms: {} });
    const alarms = resourcesOfType(quiet.json, 'AWS::CloudWatch::Alarm');
    assert.equal(alarms.length, HOSTS.length + 3);
    for (const [, a] of alarms) assert.equal(a.AlarmActions, undefined);
    assert.deepEqual(quiet.nagViolations, []);
  });
});
