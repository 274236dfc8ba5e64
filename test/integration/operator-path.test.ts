/**
 * The operator's path on a self-registered group host, against the emulators
 * (S3, SQS, DynamoDB): a normal agent start logs no error; the DLQ commands
 * find the host's DLQ from its registration; the systemd unit's doctor fails
 * when the agent's own config would.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import {
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  SendMessageCommand,
} from '@aws-sdk/client-sqs';
import { serializeImageEvent } from '../../schema/image-event.js';
import { startAgent, type AgentProcess } from '../helpers/agent-process.js';
import { putImageEvent } from '../helpers/image-events.js';
import { until } from '../helpers/until.js';
import { runCli } from '../helpers/cli.js';
import {
  createFleetTable,
  startDynamoEmulator,
  type DynamoEmulator,
} from '../helpers/dynamo-emulator.js';
import { deploymentItem, writeDeployment } from '../helpers/fleet-deployment.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { sqsEnvFor, startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';

describe('the operator on a group host', { skip: needsRoot, timeout: 300_000 }, () => {
  let s3: S3Emulator;
  let sqs: SqsEmulator;
  let dynamo: DynamoEmulator;
  let n = 0;

  before(async () => {
    [s3, sqs, dynamo] = await Promise.all([
      startS3Emulator(),
      startSqsEmulator(),
      startDynamoEmulator(),
    ]);
  });
  after(async () => {
    await Promise.all([s3?.stop(), sqs?.stop(), dynamo?.stop()]);
  });

  interface Host {
    bucket: string;
    hostId: string;
    env: NodeJS.ProcessEnv;
    queueName: string;
    dlqName: string;
  }

  async function newHost(t: TestContext): Promise<Host> {
    const i = ++n;
    const bucket = `operator-images-${i}`;
    const table = `operator-fleet-${i}`;
    await s3.createBucket(bucket);
    await createFleetTable(dynamo.client, table);
    await writeDeployment(dynamo.client, table, deploymentItem({ bucket, namePrefix: `op${i}` }));
    const stateDir = mkdtempSync(join(tmpdir(), `thinrelay-operator-${i}-`));
    const env: NodeJS.ProcessEnv = {
      ...s3EnvFor(s3),
      ...sqsEnvFor(sqs),
      AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
      THINRELAY_FLEET_TABLE: table,
      THINRELAY_GROUP: 'default',
      THINRELAY_HOST_ID: `host-${i}`,
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_VOLUME_SIZE: '96M',
      THINRELAY_WAIT_SECONDS: '1',
      THINRELAY_HEARTBEAT_SECONDS: '1',
      THINRELAY_SYNC_SECONDS: '600',
    };
    t.after(async () => {
      await runCli(['pool', 'destroy', '--force'], env);
      releaseStateDir(stateDir);
    });
    return {
      bucket,
      hostId: `host-${i}`,
      env,
      queueName: `op${i}-host-default-host-${i}`,
      dlqName: `op${i}-dlq-default-host-${i}`,
    };
  }

  function agentFor(t: TestContext, h: Host): AgentProcess {
    const agent = startAgent(['--metrics-addr', '127.0.0.1:0'], h.env);
    t.after(() => agent.kill('SIGKILL'));
    return agent;
  }

  test('a normal agent start (first and second) logs no error-level line', async (t) => {
    const h = await newHost(t);
    for (const round of [1, 2]) {
      const agent = agentFor(t, h);
      await agent.waitForLog((l) => l.msg === 'sync round done', 60_000);
      const stopped = await agent.stop();
      assert.equal(stopped.code, 0, `round ${round}`);
      const errors = agent.logs.filter((l) => l.level === 'error' || l.level === 'raw');
      assert.deepEqual(errors, [], `round ${round}: no error-level line at start`);
      assert.ok(
        !agent.logs.some((l) => JSON.stringify(l).includes('[object Object]')),
        'no field is an object stringified',
      );
    }
  });

  test('on a registered host, failed, dlq peek and redrive work with no URL; a peek costs one receive', async (t) => {
    const h = await newHost(t);
    const agent = agentFor(t, h);
    await agent.waitForLog((l) => l.msg === 'sync round done', 60_000);
    assert.equal((await agent.stop()).code, 0);
    const url = async (name: string): Promise<string> =>
      (await sqs.client.send(new GetQueueUrlCommand({ QueueName: name }))).QueueUrl!;
    const [queueUrl, dlqUrl] = await Promise.all([url(h.queueName), url(h.dlqName)]);
    const visible = async (u: string): Promise<number> =>
      Number(
        (
          await sqs.client.send(
            new GetQueueAttributesCommand({
              QueueUrl: u,
              AttributeNames: ['ApproximateNumberOfMessages'],
            }),
          )
        ).Attributes?.ApproximateNumberOfMessages,
      );
    // An event for an image that failed, in the host's DLQ. (Sent there directly: the
    // emulator does not dead-letter by a RedrivePolicy set after the queue was created.)
    const event = putImageEvent(h.bucket, 'images/broken.tar', '"0123"', '0001');
    await sqs.client.send(
      new SendMessageCommand({ QueueUrl: dlqUrl, MessageBody: serializeImageEvent(event) }),
    );

    // No --dlq-url, no THINRELAY_DLQ_URL: the registration says which DLQ.
    const env = { ...h.env, THINRELAY_DLQ_URL: '' };
    const failed = await runCli(['failed'], env);
    assert.equal(failed.code, 0, failed.stderr);
    const peek = async (): Promise<number> => {
      const r = await runCli(['dlq', 'peek', '--json'], env);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as {
        queueUrl: string;
        messages: { receiveCount: number; event: { key: string } | null }[];
      };
      assert.equal(out.queueUrl, dlqUrl);
      assert.deepEqual(
        out.messages.map((m) => m.event?.key),
        ['images/broken.tar'],
      );
      return out.messages[0]!.receiveCount;
    };
    const first = await peek();
    const second = await peek();
    const third = await peek();
    // One receive per peek (SQS); the emulator also counts the visibility reset.
    assert.ok(second - first <= 2 && third - second <= 2, `receives ${first}, ${second}, ${third}`);
    assert.equal(
      await visible(dlqUrl),
      1,
      'a peek leaves the message visible (redrive can move it)',
    );

    // The source comes from the registration; the destination is named because a message
    // sent straight to a DLQ has no DeadLetterQueueSourceArn to return to.
    const redrive = await runCli(['redrive', '--to-url', queueUrl, '--json'], env);
    assert.equal(redrive.code, 0, redrive.stderr + redrive.stdout);
    await until('message back on the host queue', async () => (await visible(queueUrl)) === 1);
    assert.equal(await visible(dlqUrl), 0);
  });
});
