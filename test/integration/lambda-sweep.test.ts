/**
 * The fleet sweep against real emulators on 127.0.0.1 (dynalite for the
 * fleet table, local-aws-sqs for host queues): metrics from the table and the
 * DLQs, a vanished host going stale and then being swept with its queues and
 * items while a live one stays, orphan queues removed, and the handler's
 * Powertools metrics. Time is moved by the `now` parameter; everything else is
 * the real thing.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { GetItemCommand, PutItemCommand, ScanCommand } from '@aws-sdk/client-dynamodb';
import { ListQueuesCommand } from '@aws-sdk/client-sqs';
import { parseConfig } from '../../infra/lib/config.js';
import { deploymentConfigItem } from '../../infra/lib/deployment-item.js';
import { fromItem, toItem, type Plain } from '../../schema/item-codec.js';
import { sweep, type SweepOptions } from '../../lambda/src/sweep.js';
import {
  fleetKeys,
  queueNames,
  type HostImageItem,
  type HostItem,
  type RolloutItem,
} from '../../schema/fleet.js';
import {
  createFleetTable,
  startDynamoEmulator,
  type DynamoEmulator,
} from '../helpers/dynamo-emulator.js';
import { hostImageItem } from '../helpers/fleet-items.js';
import { startSqsEmulator, type SqsEmulator } from '../helpers/sqs-emulator.js';

const TABLE = 'tr-fleet';
const PREFIX = 'tr';
const STALE_S = 900;
const SWEEP_S = 3600;
const T0 = Date.now();

let dynamo: DynamoEmulator;
let sqs: SqsEmulator;
const put = (item: object) =>
  dynamo.client.send(
    new PutItemCommand({ TableName: TABLE, Item: toItem(item as { [k: string]: Plain }) }),
  );
const opts = (now: number): SweepOptions => ({
  ddb: dynamo.client,
  sqs: sqs.client,
  table: TABLE,
  now,
});

async function register(hostId: string, group: string, seenAt: number): Promise<HostItem> {
  const q = await sqs.createQueue(queueNames.hostQueue(PREFIX, group, hostId), {
    dlq: { name: queueNames.dlq(PREFIX, group, hostId), maxReceiveCount: 5 },
  });
  const host: HostItem = {
    pk: fleetKeys.hostPk(hostId),
    sk: 'HOST',
    gpk: fleetKeys.hostsGpk,
    gsk: fleetKeys.hostPk(hostId),
    hostId,
    group,
    state: 'live',
    queueUrl: q.url,
    dlqUrl: q.dlqUrl!,
    agentVersion: '0.1.0',
    backend: 'loop',
    registeredAt: seenAt,
    lastSeenAt: seenAt,
    pool: null,
    dlqDepth: 0,
  };
  await put(host);
  return host;
}

/** A host's image item as the agent writes it; failed ones carry a reason. */
const image = (
  hostId: string,
  key: string,
  state: HostImageItem['state'],
  eTag: string,
): HostImageItem =>
  hostImageItem(hostId, key, state, {
    eTag,
    reasonCode: state === 'failed' ? 'HOSTILE_ARCHIVE' : null,
    message: state === 'failed' ? 'member escapes the root' : null,
    updatedAt: T0,
  });

async function queueNamesNow(): Promise<string[]> {
  const out = await sqs.client.send(new ListQueuesCommand({ QueueNamePrefix: PREFIX }));
  return (out.QueueUrls ?? []).map((u) => u.slice(u.lastIndexOf('/') + 1)).sort();
}

async function itemsOf(hostId: string): Promise<string[]> {
  const out = await dynamo.client.send(new ScanCommand({ TableName: TABLE }));
  return (out.Items ?? [])
    .map((i) => fromItem(i))
    .filter((i) => i.pk === fleetKeys.hostPk(hostId))
    .map((i) => i.sk as string)
    .sort();
}

before(async () => {
  [dynamo, sqs] = await Promise.all([startDynamoEmulator(), startSqsEmulator()]);
  await createFleetTable(dynamo.client, TABLE);
  const config = parseConfig({
    namePrefix: PREFIX,
    fleet: { staleAfterSeconds: STALE_S, sweepAfterSeconds: SWEEP_S },
    groups: [{ name: 'default' }],
  });
  await put(deploymentConfigItem(config, 'images-bucket'));
});
after(async () => {
  await Promise.all([dynamo?.stop(), sqs?.stop()]);
});

test('a vanished host goes stale, then is swept with its queues and items; a live one stays', async () => {
  const live = await register('i-live', 'default', T0);
  const vanished = await register('i-vanished', 'default', T0);
  const key = 'images/app.tar';
  const rollout: RolloutItem = {
    pk: fleetKeys.rolloutPk(key),
    sk: fleetKeys.rolloutSk('0A1B'),
    key,
    kind: 'image.put',
    eTag: 'abc',
    sequencer: '0A1B',
    sentAt: T0,
    queues: [
      queueNames.hostQueue(PREFIX, 'default', 'i-live'),
      queueNames.hostQueue(PREFIX, 'default', 'i-vanished'),
    ],
  };
  await put(rollout);
  await put(image('i-live', key, 'ready', '"abc"'));
  await put(image('i-vanished', 'images/old.tar', 'failed', 'x'));
  await sqs.send(vanished.dlqUrl, 'poison 1');
  await sqs.send(vanished.dlqUrl, 'poison 2');

  // Both seen just now: both live; the vanished one has not finished the rollout.
  const first = await sweep(opts(T0 + 60_000));
  assert.equal(first.liveHosts, 2);
  assert.equal(first.staleHosts, 0);
  assert.equal(first.hostsWithFailedImage, 1);
  assert.equal(first.dlqMessages, 2);
  assert.deepEqual(first.unfinishedRollouts, [key]);
  assert.equal(first.oldestUnfinishedRolloutSeconds, 60);
  assert.deepEqual(first.swept, []);

  // The live host keeps heartbeating; the other is silent past staleAfter.
  const later = T0 + (STALE_S + 60) * 1000;
  await put({ ...live, lastSeenAt: later });
  const second = await sweep(opts(later));
  assert.equal(second.liveHosts, 1);
  assert.equal(second.staleHosts, 1);
  assert.equal(second.hostsWithFailedImage, 0, 'failures of stale hosts are not live failures');
  assert.deepEqual(second.unfinishedRollouts, [], 'a stale host does not hold a rollout up');
  assert.deepEqual(second.swept, [], 'stale is not yet gone');
  assert.equal((await queueNamesNow()).length, 4);

  // Past staleAfter + sweepAfter: removed, queues, DLQ and items; the live host untouched.
  const muchLater = T0 + (STALE_S + SWEEP_S + 120) * 1000;
  await put({ ...live, lastSeenAt: muchLater });
  const third = await sweep(opts(muchLater));
  assert.deepEqual(third.swept, ['i-vanished']);
  assert.deepEqual(third.errors, []);
  assert.equal(third.staleHosts, 1, 'measured before removal');
  assert.deepEqual(await queueNamesNow(), [
    queueNames.dlq(PREFIX, 'default', 'i-live'),
    queueNames.hostQueue(PREFIX, 'default', 'i-live'),
  ]);
  assert.deepEqual(await itemsOf('i-vanished'), []);
  assert.deepEqual(await itemsOf('i-live'), ['HOST', fleetKeys.imageSk(key)]);

  // A newer upload of the key supersedes the first rollout; once older than sweepAfter it is pruned.
  await put({ ...rollout, sk: fleetKeys.rolloutSk('0A1C'), sequencer: '0A1C', sentAt: muchLater });
  const pruning = await sweep(opts(muchLater));
  assert.equal(pruning.rolloutsPruned, 1);
  assert.deepEqual(
    (await dynamo.client.send(new ScanCommand({ TableName: TABLE })))
      .Items!.map((i) => fromItem(i))
      .filter((i) => i.pk === fleetKeys.rolloutPk(key))
      .map((i) => i.sequencer),
    ['0A1C'],
    'the latest rollout of a key is kept',
  );

  // Idempotent: the next sweep finds nothing more to do.
  const fourth = await sweep(opts(muchLater + 60_000));
  assert.deepEqual(fourth.swept, []);
  assert.equal(fourth.rolloutsPruned, 0);
  assert.equal(fourth.liveHosts, 1);
  assert.equal(fourth.staleHosts, 0);
  assert.equal(fourth.dlqMessages, 0);
});

test('a host that comes back while being swept is not deleted', async () => {
  const host = await register('i-back', 'default', T0);
  const now = T0 + (STALE_S + SWEEP_S + 60) * 1000;
  // It heartbeats between the sweep's scan and its removal: the conditional update fails.
  const back = { ...host, lastSeenAt: now };
  const racing: SweepOptions = {
    ...opts(now),
    ddb: new Proxy(dynamo.client, {
      get(target, prop, receiver) {
        if (prop !== 'send') return Reflect.get(target, prop, receiver) as unknown;
        return async (command: { constructor: { name: string } }) => {
          if (command.constructor.name === 'UpdateItemCommand') await put(back);
          return target.send(command as never);
        };
      },
    }),
  };
  const report = await sweep(racing);
  assert.ok(!report.swept.includes('i-back'));
  const item = await dynamo.client.send(
    new GetItemCommand({
      TableName: TABLE,
      Key: { pk: { S: fleetKeys.hostPk('i-back') }, sk: { S: 'HOST' } },
    }),
  );
  assert.equal(fromItem(item.Item!).state, 'live');
  assert.ok((await queueNamesNow()).includes(queueNames.hostQueue(PREFIX, 'default', 'i-back')));
});

test('queues no host item owns are removed once older than staleAfter + sweepAfter', async () => {
  await sqs.createQueue(queueNames.hostQueue(PREFIX, 'default', 'i-orphan'), {
    dlq: { name: queueNames.dlq(PREFIX, 'default', 'i-orphan'), maxReceiveCount: 5 },
  });
  const young = await sweep(opts(Date.now() + 60_000));
  assert.deepEqual(young.orphanQueuesDeleted, [], 'a host registering right now is not an orphan');
  const old = await sweep(opts(Date.now() + (STALE_S + SWEEP_S + 60) * 1000));
  assert.deepEqual(old.orphanQueuesDeleted.sort(), [
    queueNames.dlq(PREFIX, 'default', 'i-orphan'),
    queueNames.hostQueue(PREFIX, 'default', 'i-orphan'),
  ]);
  assert.ok(!(await queueNamesNow()).some((n) => n.endsWith('i-orphan')));
});

test('the handler publishes the fleet metrics as EMF (namespace thinrelay, service thinrelay-sweep)', async () => {
  Object.assign(process.env, {
    FLEET_TABLE: TABLE,
    AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
    AWS_ENDPOINT_URL_SQS: sqs.endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'fake',
    AWS_SECRET_ACCESS_KEY: 'fake',
    AWS_EC2_METADATA_DISABLED: 'true',
    POWERTOOLS_LOG_LEVEL: 'WARN',
  });
  // Powertools writes EMF to stdout with its own console: read what reaches the stream.
  const lines: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = (chunk: string | Uint8Array, ...rest: never[]) => {
    lines.push(...String(chunk).split('\n'));
    return write(chunk, ...rest);
  };
  try {
    const { runSweep } = await import('../../lambda/src/sweep-handler.js');
    await runSweep();
  } finally {
    process.stdout.write = write;
  }
  const emf = lines
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        return null;
      }
    })
    .find((o) => o !== null && '_aws' in o) as Record<string, unknown> | undefined;
  assert.ok(emf, `EMF line among ${lines.length} printed`);
  const meta = (emf._aws as { CloudWatchMetrics: { Namespace: string; Dimensions: string[][] }[] })
    .CloudWatchMetrics[0]!;
  assert.equal(meta.Namespace, 'thinrelay');
  assert.deepEqual(meta.Dimensions, [['service']]);
  assert.equal(emf.service, 'thinrelay-sweep');
  assert.equal(emf.LiveHosts, 2);
  for (const name of [
    'StaleHosts',
    'HostsWithFailedImage',
    'DlqMessages',
    'OldestUnfinishedRolloutSeconds',
  ])
    assert.equal(typeof emf[name], 'number', name);
});
