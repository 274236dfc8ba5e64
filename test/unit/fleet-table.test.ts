/**
 * The fleet table's one writer (schema/fleet-table.ts) against a real table
 * (dynalite): batch deletes resend what the table leaves unprocessed and give
 * up with a typed error; host removal goes intent first, HOST item last, and
 * leaves a host that came back alone; how ETags compare.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  GetItemCommand,
  ScanCommand,
  BatchWriteItemCommand,
  type BatchWriteItemCommandOutput,
  type DynamoDBClient,
} from '@aws-sdk/client-dynamodb';
import { normalizeETag, optionalETag, sameETag } from '../../schema/etag.js';
import { fleetKeys } from '../../schema/fleet.js';
import { FleetTable, UnprocessedWritesError } from '../../schema/fleet-table.js';
import { fromItem } from '../../schema/item-codec.js';
import {
  createFleetTable,
  startDynamoEmulator,
  type DynamoEmulator,
} from '../helpers/dynamo-emulator.js';
import { hostImageItem, hostItem, putItems } from '../helpers/fleet-items.js';

let dynamo: DynamoEmulator;
let n = 0;

before(async () => {
  dynamo = await startDynamoEmulator();
});
after(async () => {
  await dynamo.stop();
});

async function newTable(items: object[]): Promise<string> {
  const name = `fleet-table-${++n}`;
  await createFleetTable(dynamo.client, name);
  await putItems(dynamo.client, name, items);
  return name;
}

async function keysIn(table: string): Promise<string[]> {
  const out = await dynamo.client.send(new ScanCommand({ TableName: table }));
  return (out.Items ?? []).map((i) => `${fromItem(i).pk as string} ${fromItem(i).sk as string}`);
}

/**
 * The emulator's client, except that for the first `throttled` calls
 * BatchWriteItem handles only `landing` requests of each call and hands the
 * rest back unprocessed, as DynamoDB does when throttled. `sent` records
 * every command by name.
 */
function throttling(
  table: string,
  throttled: number,
  landing = 1,
): { client: DynamoDBClient; sent: string[] } {
  const sent: string[] = [];
  let calls = 0;
  const client = new Proxy(dynamo.client, {
    get(target, prop, receiver) {
      if (prop !== 'send') return Reflect.get(target, prop, receiver) as unknown;
      return async (command: { constructor: { name: string } }) => {
        sent.push(command.constructor.name);
        if (command.constructor.name !== 'BatchWriteItemCommand' || calls++ >= throttled)
          return target.send(command as never);
        const requests = (command as BatchWriteItemCommand).input.RequestItems![table]!;
        const land = requests.slice(0, landing);
        const rest = requests.slice(landing);
        const out: Partial<BatchWriteItemCommandOutput> =
          land.length === 0
            ? {}
            : await target.send(new BatchWriteItemCommand({ RequestItems: { [table]: land } }));
        return { ...out, UnprocessedItems: rest.length > 0 ? { [table]: rest } : {} };
      };
    },
  });
  return { client, sent };
}

test('batch deletes: what the table leaves unprocessed is sent again until all are gone', async () => {
  const images = Array.from({ length: 30 }, (_, i) =>
    hostImageItem('h-1', `images/${i}.tar`, 'ready'),
  );
  const table = await newTable(images);
  const { client, sent } = throttling(table, 3);
  const waits: number[] = [];
  const t = new FleetTable(client, table, (ms) => {
    waits.push(ms);
    return Promise.resolve();
  });
  assert.equal(await t.deleteItems(images), 30);
  assert.deepEqual(await keysIn(table), []);
  // 25 + 5: the first three calls each land one item; then the rest of the batch, then the 5.
  assert.equal(sent.filter((c) => c === 'BatchWriteItemCommand').length, 5);
  assert.equal(waits.length, 3, 'a back-off before each resend');
  assert.ok(waits.every((ms) => ms >= 0 && ms <= 2000));
});

test('batch deletes: a table that keeps refusing gives up with UnprocessedWritesError', async () => {
  const images = Array.from({ length: 3 }, (_, i) =>
    hostImageItem('h-1', `images/${i}.tar`, 'ready'),
  );
  const table = await newTable(images);
  const { client, sent } = throttling(table, Infinity, 0);
  const waits: number[] = [];
  const t = new FleetTable(client, table, (ms) => {
    waits.push(ms);
    return Promise.resolve();
  });
  await assert.rejects(t.deleteItems(images), (err: unknown) => {
    assert.ok(err instanceof UnprocessedWritesError);
    assert.equal(err.unprocessed, 3);
    return true;
  });
  assert.equal(sent.length, 9, 'nine sends in all');
  assert.equal(waits.length, 8);
  assert.equal((await keysIn(table)).length, 3);
});

test('host removal, conditional (the sweep): marked gone, then queues, images, the HOST item last', async () => {
  const host = hostItem('old-1', { lastSeenAt: 1000 });
  const images = [
    hostImageItem('old-1', 'images/a.tar', 'ready'),
    hostImageItem('old-1', 'images/b.tar', 'ready'),
  ];
  const table = await newTable([host, ...images, hostItem('other-1')]);
  const { client, sent } = throttling(table, 0);
  const t = new FleetTable(client, table);
  let seenByQueues: string[] = [];
  const removed = await t.removeHost({
    hostId: 'old-1',
    itemKeys: images,
    lastSeenAt: 1000,
    beforeItems: async () => {
      seenByQueues = await keysIn(table);
      const item = await dynamo.client.send(
        new GetItemCommand({
          TableName: table,
          Key: { pk: { S: fleetKeys.hostPk('old-1') }, sk: { S: fleetKeys.hostSk } },
        }),
      );
      assert.equal(fromItem(item.Item!).state, 'gone', 'the intent is recorded first');
    },
  });
  assert.deepEqual(removed, { removed: true, itemsDeleted: 3 });
  assert.equal(seenByQueues.length, 4, 'nothing deleted before the queues');
  assert.deepEqual(sent, ['UpdateItemCommand', 'BatchWriteItemCommand', 'DeleteItemCommand']);
  assert.deepEqual(await keysIn(table), ['HOST#other-1 HOST']);
});

test('host removal: a host that heartbeats meanwhile keeps its HOST item', async () => {
  const host = hostItem('back-1', { lastSeenAt: 1000 });
  const images = [hostImageItem('back-1', 'images/a.tar', 'ready')];
  const table = await newTable([host, ...images]);
  const t = new FleetTable(dynamo.client, table);
  const removed = await t.removeHost({
    hostId: 'back-1',
    itemKeys: images,
    lastSeenAt: 1000,
    // Its agent writes the whole HOST item again on its next beat.
    beforeItems: () => t.putHost({ ...host, lastSeenAt: 2000 }),
  });
  assert.equal(removed.removed, false);
  const left = await dynamo.client.send(
    new GetItemCommand({
      TableName: table,
      Key: { pk: { S: fleetKeys.hostPk('back-1') }, sk: { S: fleetKeys.hostSk } },
    }),
  );
  assert.equal(fromItem(left.Item!).state, 'live');

  // Seen since the scan: not even marked.
  const again = await t.removeHost({
    hostId: 'back-1',
    itemKeys: [],
    lastSeenAt: 1000,
    beforeItems: () => Promise.reject(new Error('must not run')),
  });
  assert.deepEqual(again, { removed: false, itemsDeleted: 0 });
});

test('host removal, unconditional (fleet forget): no mark, queues first, every item', async () => {
  const images = [hostImageItem('f-1', 'images/a.tar', 'ready')];
  const table = await newTable([hostItem('f-1'), ...images]);
  const { client, sent } = throttling(table, 0);
  const t = new FleetTable(client, table);
  const keys = [{ pk: fleetKeys.hostPk('f-1'), sk: fleetKeys.hostSk }, ...images];
  const removed = await t.removeHost({
    hostId: 'f-1',
    itemKeys: keys,
    lastSeenAt: null,
    beforeItems: () => Promise.resolve(),
  });
  assert.deepEqual(removed, { removed: true, itemsDeleted: 2 });
  assert.deepEqual(sent, ['BatchWriteItemCommand', 'DeleteItemCommand']);
  assert.deepEqual(await keysIn(table), []);
  // Nothing left: a rerun deletes nothing and says so.
  assert.deepEqual(
    await t.removeHost({
      hostId: 'f-1',
      itemKeys: [],
      lastSeenAt: null,
      beforeItems: () => Promise.resolve(),
    }),
    { removed: true, itemsDeleted: 0 },
  );
});

test('ETags: quoted (S3 API), bare (S3 events) and weak spellings compare equal', () => {
  assert.equal(normalizeETag('"abc"'), 'abc');
  assert.equal(normalizeETag(' W/"abc" '), 'abc');
  assert.ok(sameETag('"abc-2"', 'abc-2'));
  assert.ok(!sameETag('"abc"', '"abd"'));
  assert.equal(optionalETag(null), null);
  assert.equal(optionalETag(undefined), null);
  assert.equal(optionalETag(''), null);
  assert.equal(optionalETag('""'), null);
  assert.equal(optionalETag('"e1"'), 'e1');
});
