/**
 * Group agents (`thinrelay agent --group`) as separate processes with their
 * own state dirs, against real emulators: S3 (s3rver), SQS (local-aws-sqs),
 * DynamoDB (dynalite, the fleet table), and real loop devices. Registration,
 * catch-up sync, queue recreation, deregistration and fleet-table faults.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import {
  DeleteQueueCommand,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  ListQueueTagsCommand,
  PurgeQueueCommand,
} from '@aws-sdk/client-sqs';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import Database from 'better-sqlite3';
import dynalite from 'dynalite';
import { agentVersion } from '../../host-agent/src/fleet/member/agent-version.js';
import { dbFileName } from '../../host-agent/src/store/db.js';
import { serializeImageEvent } from '../../schema/image-event.js';
import { startAgent, type AgentProcess, type LogLine } from '../helpers/agent-process.js';
import { runCli } from '../helpers/cli.js';
import { createFleetTable, DYNAMO_REGION } from '../helpers/dynamo-emulator.js';
import {
  deploymentItem,
  readHostImageItem,
  readHostItem,
  writeDeployment,
} from '../helpers/fleet-deployment.js';
import { releaseStateDir } from '../helpers/host-leaks.js';
import { until } from '../helpers/until.js';
import { needsRoot } from '../helpers/root.js';
import { s3EnvFor, startS3Emulator, type S3Emulator } from '../helpers/s3-emulator.js';
import { sqsEnvFor, startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';
import { putImageEvent } from '../helpers/image-events.js';
import { packTar } from '../helpers/tar-fixtures.js';

const smallTar = (marker: string): Promise<Buffer> =>
  packTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/hostname', content: `${marker}\n` },
    { name: 'bin/tool', content: randomBytes(4096), mode: 0o755 },
  ]);

/** dynalite on a fixed port, so a test can stop it and bring it back at the same address. */
async function startDynalite(port = 0): Promise<{
  endpoint: string;
  port: number;
  client: DynamoDBClient;
  stop(): Promise<void>;
}> {
  const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const bound = (server.address() as AddressInfo).port;
  const endpoint = `http://127.0.0.1:${bound}`;
  const client = new DynamoDBClient({
    region: DYNAMO_REGION,
    endpoint,
    credentials: { accessKeyId: 'fake', secretAccessKey: 'fake' },
  });
  let stopped = false;
  return {
    endpoint,
    port: bound,
    client,
    async stop() {
      if (stopped) return;
      stopped = true;
      client.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

type Dynalite = Awaited<ReturnType<typeof startDynalite>>;

function countRows(stateDir: string, sql: string): number {
  const db = new Database(join(stateDir, dbFileName), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare(sql).pluck().get() as number | undefined) ?? 0;
  } finally {
    db.close();
  }
}

const isRound = (l: LogLine): boolean => l.msg === 'sync round done';

/** An S3 put event as the fan-out Lambda sends it, serialized. */
const putEvent = (bucket: string, key: string, eTag: string, sequencer: string): string =>
  serializeImageEvent(putImageEvent(bucket, key, eTag, sequencer));

describe('thinrelay agent --group (fleet)', { skip: needsRoot, timeout: 600_000 }, () => {
  let s3: S3Emulator;
  let sqs: SqsEmulator;
  let dynamo: Dynalite;
  let n = 0;

  before(async () => {
    [s3, sqs, dynamo] = await Promise.all([startS3Emulator(), startSqsEmulator(), startDynalite()]);
  });
  after(async () => {
    await Promise.all([s3?.stop(), sqs?.stop(), dynamo?.stop()]);
  });

  interface Fleet {
    bucket: string;
    table: string;
    hostId: string;
    stateDir: string;
    env: NodeJS.ProcessEnv;
    queueName: string;
    dlqName: string;
  }

  /** A bucket, a fleet table with its deployment item, and one host's state dir. */
  async function newFleet(t: TestContext, env: NodeJS.ProcessEnv = {}): Promise<Fleet> {
    const i = ++n;
    const bucket = `fleet-images-${i}`;
    const table = `fleet-${i}`;
    await s3.createBucket(bucket);
    await createFleetTable(dynamo.client, table);
    await writeDeployment(dynamo.client, table, deploymentItem({ bucket, namePrefix: `tr${i}` }));
    const hostId = `host-${i}`;
    const stateDir = mkdtempSync(join(tmpdir(), `thinrelay-fleet-${i}-`));
    const fullEnv: NodeJS.ProcessEnv = {
      ...s3EnvFor(s3),
      ...sqsEnvFor(sqs),
      AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
      THINRELAY_FLEET_TABLE: table,
      THINRELAY_STATE_DIR: stateDir,
      THINRELAY_RESERVE_BYTES: '0',
      THINRELAY_VOLUME_SIZE: '96M',
      THINRELAY_WAIT_SECONDS: '1',
      THINRELAY_TRANSIENT_DELAY_MS: '100',
      THINRELAY_HEARTBEAT_SECONDS: '1',
      THINRELAY_SYNC_SECONDS: '600',
      ...env,
    };
    t.after(async () => {
      await runCli(['pool', 'destroy', '--force'], fullEnv);
      releaseStateDir(stateDir);
    });
    return {
      bucket,
      table,
      hostId,
      stateDir,
      env: fullEnv,
      queueName: `tr${i}-host-default-${hostId}`,
      dlqName: `tr${i}-dlq-default-${hostId}`,
    };
  }

  function agentFor(t: TestContext, f: Fleet, env: NodeJS.ProcessEnv = {}): AgentProcess {
    const agent = startAgent(
      ['--group', 'default', '--host-id', f.hostId, '--metrics-addr', '127.0.0.1:0'],
      { ...f.env, ...env },
    );
    t.after(() => agent.kill('SIGKILL'));
    return agent;
  }

  async function metricsOf(agent: AgentProcess): Promise<string> {
    const endpoint = await agent.waitForLog((l) => l.msg === 'health and metrics endpoint');
    return (await fetch(`${endpoint.url as string}/metrics`)).text();
  }

  const queueUrl = async (name: string): Promise<string> =>
    (await sqs.client.send(new GetQueueUrlCommand({ QueueName: name }))).QueueUrl!;

  const readyKeys = async (f: Fleet): Promise<string[]> => {
    const out = await runCli(['images', '--json'], f.env);
    assert.equal(out.code, 0, out.stderr);
    return (JSON.parse(out.stdout) as { key: string; status: string }[])
      .filter((i) => i.status === 'ready')
      .map((i) => i.key)
      .sort();
  };

  test('a host started after three uploads has all three ready within one sync round', async (t) => {
    const f = await newFleet(t);
    const keys = ['images/a.tar', 'images/b.tar', 'images/c.tar'];
    const eTags = new Map<string, string>();
    for (const key of keys)
      eTags.set(key, (await s3.putObject(f.bucket, key, await smallTar(key))).eTag);
    // Not for this host: outside the images prefix.
    await s3.putObject(f.bucket, 'other/readme.txt', 'not an image');

    const agent = agentFor(t, f);
    const round = await agent.waitForLog(isRound, 120_000);
    assert.equal(round.keys, 3);
    assert.equal(round.processed, 3);
    assert.equal(round.listRequests, 1);
    assert.deepEqual(await readyKeys(f), keys);
    assert.equal(agent.outcomes().length, 0, 'no queue message was involved');

    // Its fleet items: three images ready at their ETags, the host live.
    for (const key of keys) {
      const item = await until(`${key} ready in the fleet table`, async () => {
        const it = await readHostImageItem(dynamo.client, f.table, f.hostId, key);
        return it?.state === 'ready' ? it : undefined;
      });
      assert.equal(item.eTag, eTags.get(key));
      assert.equal(item.group, 'default');
      assert.equal(item.gpk, `IMAGE#${key}`);
      assert.equal(item.gsk, `HOST#${f.hostId}`);
    }
    const host = await until('a heartbeat with pool figures', async () => {
      const h = await readHostItem(dynamo.client, f.table, f.hostId);
      return (h?.pool?.dataUsedBytes ?? 0) > 0 && h?.dlqDepth !== null ? h : undefined;
    });
    assert.equal(host.state, 'live');
    assert.equal(host.group, 'default');
    assert.equal(host.backend, 'loop');
    assert.equal(host.agentVersion, agentVersion(), "package.json's version");
    assert.equal(host.queueUrl, await queueUrl(f.queueName));
    assert.equal(host.dlqUrl, await queueUrl(f.dlqName));
    assert.ok(host.pool!.dataTotalBytes > 0 && host.pool!.dataUsedBytes > 0);
    assert.equal(host.dlqDepth, 0);
    assert.ok(Date.now() - host.lastSeenAt < 10_000);

    // The queues as the stack made them: redrive, retention, visibility, encryption, tags.
    const q = await sqs.client.send(
      new GetQueueAttributesCommand({ QueueUrl: host.queueUrl, AttributeNames: ['All'] }),
    );
    const dlqArn = (
      await sqs.client.send(
        new GetQueueAttributesCommand({ QueueUrl: host.dlqUrl, AttributeNames: ['All'] }),
      )
    ).Attributes!;
    assert.deepEqual(JSON.parse(q.Attributes!.RedrivePolicy!), {
      deadLetterTargetArn: dlqArn.QueueArn,
      maxReceiveCount: 100,
    });
    assert.equal(q.Attributes!.MessageRetentionPeriod, String(4 * 86400));
    assert.equal(q.Attributes!.VisibilityTimeout, '120');
    assert.equal(q.Attributes!.SqsManagedSseEnabled, 'true');
    assert.equal(dlqArn.MessageRetentionPeriod, String(14 * 86400));
    assert.equal(dlqArn.SqsManagedSseEnabled, 'true');
    assert.deepEqual(JSON.parse(dlqArn.RedriveAllowPolicy!), {
      redrivePermission: 'byQueue',
      sourceQueueArns: [q.Attributes!.QueueArn],
    });
    const tags = await sqs.client.send(new ListQueueTagsCommand({ QueueUrl: host.queueUrl }));
    assert.deepEqual(tags.Tags, { 'thinrelay:group': 'default', 'thinrelay:host': f.hostId });

    const metrics = await metricsOf(agent);
    assert.match(metrics, /^thinrelay_sync_rounds_total\{result="ok"\} 1$/m);
    assert.match(metrics, /^thinrelay_sync_last_round_keys 3$/m);
    assert.match(metrics, /^thinrelay_sync_list_requests_total 1$/m);
    assert.equal((await agent.stop()).code, 0);

    // Restarted: registration is idempotent, and nothing is redone.
    const again = agentFor(t, f);
    const second = await again.waitForLog(isRound, 60_000);
    assert.equal(second.upToDate, 3);
    assert.equal(second.processed, 0);
    assert.equal(countRows(f.stateDir, `SELECT COUNT(*) FROM jobs`), 3);
    assert.equal((await again.stop()).code, 0);
  });

  test('a host whose queue lost its messages converges at the next sync round', async (t) => {
    const f = await newFleet(t, { THINRELAY_SYNC_SECONDS: '3' });
    const agent = agentFor(t, f);
    const first = await agent.waitForLog(isRound, 60_000);
    assert.equal(first.keys, 0);

    // An upload whose event was lost: the queue was purged before the agent saw it.
    const key = 'images/lost.tar';
    const { eTag } = await s3.putObject(f.bucket, key, await smallTar('lost'));
    const url = await queueUrl(f.queueName);
    await sqs.client.send(new PurgeQueueCommand({ QueueUrl: url }));
    const round = await agent.waitForLog((l) => isRound(l) && l.processed === 1, 60_000);
    assert.equal(round.keys, 1);
    assert.deepEqual(await readyKeys(f), [key]);
    const item = await until('the fleet item', async () => {
      const it = await readHostImageItem(dynamo.client, f.table, f.hostId, key);
      return it?.state === 'ready' ? it : undefined;
    });
    assert.equal(item.eTag, eTag);
    assert.equal((await agent.stop()).code, 0);
  });

  test('signature sidecars in the bucket and their events are never images', async (t) => {
    const f = await newFleet(t);
    const key = 'images/signed.tar';
    const { eTag } = await s3.putObject(f.bucket, key, await smallTar('signed'));
    // A signature next to its image, and one whose image is not uploaded yet.
    const sig = await s3.putObject(
      f.bucket,
      `${key}.sig`,
      `${randomBytes(70).toString('base64')}\n`,
    );
    await s3.putObject(f.bucket, 'images/later.tar.sigstore.json', '{"mediaType":"x"}');

    const agent = agentFor(t, f);
    const round = await agent.waitForLog(isRound, 120_000);
    assert.equal(round.keys, 1, 'only the image is listed as one');
    assert.equal(round.processed, 1);
    assert.equal(round.failed, 0);
    assert.deepEqual(await readyKeys(f), [key]);
    assert.equal(countRows(f.stateDir, `SELECT COUNT(*) FROM images WHERE key LIKE '%.sig%'`), 0);

    // The sidecar's own event: applied to the image it signs, never run as an image.
    await sqs.send(
      await queueUrl(f.queueName),
      serializeImageEvent({
        ...putImageEvent(f.bucket, `${key}.sig`, sig.eTag, '00000000000000A0'),
        kind: 'sidecar.put',
      }),
    );
    const outcome = await agent.waitForLog(
      (l) => l.outcome !== undefined && l.key === `${key}.sig`,
    );
    assert.equal(outcome.outcome, 'applied', JSON.stringify(outcome));
    assert.match(
      String(outcome.reason),
      /signature sidecar of images\/signed\.tar: no image here waits for it/,
    );
    assert.deepEqual(await readyKeys(f), [key]);
    assert.equal(countRows(f.stateDir, `SELECT COUNT(*) FROM images`), 1);
    assert.equal(countRows(f.stateDir, `SELECT COUNT(*) FROM jobs`), 1, 'nothing run again');
    const item = await readHostImageItem(dynamo.client, f.table, f.hostId, key);
    assert.equal(item?.state, 'ready');
    assert.equal(item?.eTag, eTag);
    assert.equal(
      await readHostImageItem(dynamo.client, f.table, f.hostId, `${key}.sig`),
      undefined,
    );
    assert.equal((await agent.stop()).code, 0);
  });

  test('a key deleted while the host was down is retired when it comes back', async (t) => {
    const f = await newFleet(t);
    const kept = 'images/kept.tar';
    const gone = 'images/gone.tar';
    await s3.putObject(f.bucket, kept, await smallTar('kept'));
    await s3.putObject(f.bucket, gone, await smallTar('gone'));
    const first = agentFor(t, f);
    await first.waitForLog(isRound, 120_000);
    assert.deepEqual(await readyKeys(f), [gone, kept]);
    assert.equal((await first.stop()).code, 0);

    await s3.client.send(new DeleteObjectCommand({ Bucket: f.bucket, Key: gone }));
    const back = agentFor(t, f);
    const round = await back.waitForLog(isRound, 60_000);
    assert.equal(round.retired, 1);
    assert.equal(round.upToDate, 1);
    assert.deepEqual(await readyKeys(f), [kept]);
    await until('the retired fleet item', async () => {
      const it = await readHostImageItem(dynamo.client, f.table, f.hostId, gone);
      return it?.state === 'retired';
    });
    assert.equal((await back.stop()).code, 0);
  });

  test('a sync round racing an event for the same key does the work once', async (t) => {
    const f = await newFleet(t);
    // Registered once (an empty bucket), so the queue exists to carry the event.
    const first = agentFor(t, f);
    await first.waitForLog(isRound, 60_000);
    assert.equal((await first.stop()).code, 0);
    // local-aws-sqs keeps serving a long poll the stopped agent abandoned: let it expire
    // (THINRELAY_WAIT_SECONDS=1) so it cannot swallow the event below.
    await sleep(1500);
    const key = 'images/race.tar';
    const { eTag } = await s3.putObject(f.bucket, key, await smallTar('race'));
    const url = await queueUrl(f.queueName);
    await sqs.send(url, putEvent(f.bucket, key, eTag, '0000000000001000'));
    const agent = agentFor(t, f);
    await agent.waitForLog(isRound, 120_000);
    await agent.waitForLog((l) => l.outcome === 'applied', 60_000);
    assert.deepEqual(await readyKeys(f), [key]);
    assert.equal(
      countRows(
        f.stateDir,
        `SELECT COUNT(*) FROM job_steps WHERE name = 'unpack' AND status = 'complete'`,
      ),
      1,
      'one unpack for the event and the sync together',
    );
    assert.equal((await agent.stop()).code, 0);
  });

  test('a queue deleted under a running agent is recreated and polling goes on', async (t) => {
    const f = await newFleet(t);
    const agent = agentFor(t, f);
    await agent.waitForLog(isRound, 60_000);
    await sqs.client.send(new DeleteQueueCommand({ QueueUrl: await queueUrl(f.queueName) }));
    await agent.waitForLog(
      (l) => l.msg === 'host queue created again; a sync round follows',
      60_000,
    );

    // The recreated queue has its redrive policy again and carries events.
    const url = await queueUrl(f.queueName);
    const attrs = await sqs.client.send(
      new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['RedrivePolicy'] }),
    );
    assert.ok(attrs.Attributes?.RedrivePolicy, 'redrive policy restored');
    const key = 'images/after.tar';
    const { eTag } = await s3.putObject(f.bucket, key, await smallTar('after'));
    await sqs.send(url, putEvent(f.bucket, key, eTag, '0000000000002000'));
    const applied = await agent.waitForLog((l) => l.outcome === 'applied', 60_000);
    assert.equal(applied.key, key);
    assert.match(await metricsOf(agent), /^thinrelay_queue_recreated_total 1$/m);
    assert.equal((await agent.stop()).code, 0);
  });

  test('deregister is refused while the agent runs; then removes the queues and marks the host gone', async (t) => {
    const f = await newFleet(t);
    const agent = agentFor(t, f);
    await agent.waitForLog(isRound, 60_000);
    const refused = await runCli(['agent', 'deregister'], f.env);
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, /AGENT_RUNNING/);
    assert.ok(await queueUrl(f.queueName));
    assert.equal((await agent.stop()).code, 0);

    // From the state dir's registration: no flags needed.
    const out = await runCli(['agent', 'deregister', '--json'], f.env);
    assert.equal(out.code, 0, out.stderr);
    const result = JSON.parse(out.stdout) as {
      markedGone: boolean;
      queue: { deleted: boolean };
      dlq: { deleted: boolean };
    };
    assert.equal(result.markedGone, true);
    assert.equal(result.queue.deleted, true);
    assert.equal(result.dlq.deleted, true);
    for (const name of [f.queueName, f.dlqName]) {
      await assert.rejects(
        sqs.client.send(new GetQueueUrlCommand({ QueueName: name })),
        /QueueDoesNotExist|NonExistentQueue/,
      );
    }
    assert.equal((await readHostItem(dynamo.client, f.table, f.hostId))?.state, 'gone');
    // Idempotent: a second run finds nothing left to delete.
    const again = await runCli(['agent', 'deregister', '--json'], f.env);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(
      (JSON.parse(again.stdout) as { queue: { deleted: boolean } }).queue.deleted,
      false,
    );
  });

  test('a failed fleet write does not fail the image: it is counted and retried', async (t) => {
    // Its own dynalite, so stopping it touches no other test.
    const own = await startDynalite();
    t.after(() => own.stop());
    const f = await newFleet(t, {
      AWS_ENDPOINT_URL_DYNAMODB: own.endpoint,
      THINRELAY_SYNC_SECONDS: '2',
      THINRELAY_FLEET_RETRY_MAX_MS: '1000',
    });
    await createFleetTable(own.client, f.table);
    await writeDeployment(
      own.client,
      f.table,
      deploymentItem({ bucket: f.bucket, namePrefix: `tr${n}` }),
    );
    const agent = agentFor(t, f);
    await agent.waitForLog(isRound, 60_000);

    await own.stop();
    const key = 'images/unrecorded.tar';
    await s3.putObject(f.bucket, key, await smallTar('unrecorded'));
    const round = await agent.waitForLog((l) => isRound(l) && l.processed === 1, 60_000);
    assert.equal(round.failed, 0);
    assert.deepEqual(
      await readyKeys(f),
      [key],
      'the image is ready although its status write failed',
    );
    await agent.waitForLog((l) => l.msg === 'fleet item write failed; retrying', 30_000);
    const metrics = await metricsOf(agent);
    const failures = /^thinrelay_fleet_write_failures_total\{item="image"\} (\d+)$/m.exec(metrics);
    assert.ok(failures !== null && Number(failures[1]) >= 1, metrics);

    // The table is back (empty, at the same address): the retried write lands.
    const revived = await startDynalite(own.port);
    t.after(() => revived.stop());
    await createFleetTable(revived.client, f.table);
    await until(
      'the retried write',
      async () => {
        const it = await readHostImageItem(revived.client, f.table, f.hostId, key);
        return it?.state === 'ready';
      },
      30_000,
    );
    assert.equal((await agent.stop()).code, 0);
  });
});
