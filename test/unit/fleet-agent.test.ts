/**
 * The group agent's parts on their own: host id (IMDSv2 against a local
 * metadata server), settings, the deployment item's checks, which recorded
 * failures sync retries, and the fleet writer against dynalite.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadDaemonConfig } from '../../host-agent/src/daemon/config.js';
import { isPermanentFailureCode } from '../../host-agent/src/pipeline/failure.js';
import { UsageError } from '../../host-agent/src/errors.js';
import { FleetMetrics } from '../../host-agent/src/fleet/member/fleet-metrics.js';
import { loadFleetSettings } from '../../host-agent/src/fleet/member/fleet-settings.js';
import { parseDeployment } from '../../host-agent/src/fleet/member/fleet-client.js';
import { FleetWriter } from '../../host-agent/src/fleet/member/fleet-writer.js';
import { resolveHostIdentity } from '../../host-agent/src/fleet/member/host-id.js';
import { silentLogger } from '../../host-agent/src/log.js';
import type { HostImageItem } from '../../schema/fleet.js';
import { FleetTable } from '../../schema/fleet-table.js';
import {
  createFleetTable,
  startDynamoEmulator,
  type DynamoEmulator,
} from '../helpers/dynamo-emulator.js';
import { deploymentItem, readHostImageItem } from '../helpers/fleet-deployment.js';

/** IMDSv2 as EC2 serves it: a token by PUT, metadata only with that token. */
async function fakeImds(opts: { silent?: boolean } = {}): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    if (opts.silent) return; // never answers
    if (req.method === 'PUT' && req.url === '/latest/api/token') {
      if (req.headers['x-aws-ec2-metadata-token-ttl-seconds'] === undefined)
        return void res.writeHead(400).end();
      return void res.end('TOKEN123');
    }
    if (req.headers['x-aws-ec2-metadata-token'] !== 'TOKEN123')
      return void res.writeHead(401).end();
    if (req.url === '/latest/meta-data/instance-id') return void res.end('i-0abc123def4567890');
    if (req.url === '/latest/meta-data/placement/region') return void res.end('eu-west-1');
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

describe('host id', () => {
  test('flag, then THINRELAY_HOST_ID; both validated for queue names', async () => {
    assert.equal((await resolveHostIdentity('web-01', {})).hostId, 'web-01');
    const env = await resolveHostIdentity(undefined, { THINRELAY_HOST_ID: 'h2' });
    assert.deepEqual(env, { hostId: 'h2', source: 'environment', region: null });
    await assert.rejects(resolveHostIdentity('web.01', {}), UsageError);
    await assert.rejects(resolveHostIdentity('x'.repeat(41), {}), /not valid/);
  });

  test('EC2: the instance id and region from IMDSv2 (token first)', async () => {
    const imds = await fakeImds();
    try {
      const id = await resolveHostIdentity(undefined, {
        AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url,
      });
      assert.deepEqual(id, { hostId: 'i-0abc123def4567890', source: 'ec2', region: 'eu-west-1' });
    } finally {
      imds.server.closeAllConnections();
      imds.server.close();
    }
  });

  test('no metadata answer in time, or metadata disabled: the hostname', async () => {
    const imds = await fakeImds({ silent: true });
    try {
      const started = Date.now();
      const id = await resolveHostIdentity(
        undefined,
        { AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url },
        300,
      );
      assert.equal(id.source, 'hostname');
      assert.ok(Date.now() - started < 2000, 'a short timeout');
    } finally {
      imds.server.closeAllConnections();
      imds.server.close();
    }
    const off = await resolveHostIdentity(undefined, { AWS_EC2_METADATA_DISABLED: 'true' });
    assert.equal(off.source, 'hostname');
  });
});

describe('settings', () => {
  test('no group: the fixed-queue agent; a group needs the fleet table', () => {
    assert.equal(loadFleetSettings({}, {}), null);
    assert.throws(() => loadFleetSettings({ group: 'web' }, {}), /no fleet table/);
    const s = loadFleetSettings({}, { THINRELAY_GROUP: 'web', THINRELAY_FLEET_TABLE: 't' });
    assert.equal(s?.group, 'web');
    assert.equal(s?.syncSeconds, 600);
    assert.equal(s?.heartbeatSeconds, 60);
    assert.throws(
      () => loadFleetSettings({ group: 'web-1' }, { THINRELAY_FLEET_TABLE: 't' }),
      /group "web-1"/,
    );
    assert.throws(
      () =>
        loadFleetSettings(
          { group: 'web' },
          { THINRELAY_FLEET_TABLE: 't', THINRELAY_SYNC_SECONDS: '0' },
        ),
      /THINRELAY_SYNC_SECONDS/,
    );
  });

  test('a group agent registers its own queue: a queue URL as well is refused', () => {
    assert.equal(loadDaemonConfig({ group: 'web' }, {}).queueUrl, null);
    assert.throws(
      () => loadDaemonConfig({ group: 'web', queueUrl: 'https://sqs.x.amazonaws.com/1/q' }, {}),
      /both a queue URL and a group/,
    );
    assert.throws(() => loadDaemonConfig({}, {}), /no queue given/);
  });
});

describe('deployment item', () => {
  test('read field by field; a bad field is named', () => {
    const good = deploymentItem({ bucket: 'b', routes: { 'images/gpu/': ['gpu'] } });
    assert.deepEqual(parseDeployment({ ...good } as never, 't'), good);
    const { groups: _g, ...noGroups } = good;
    assert.throws(() => parseDeployment(noGroups, 't'), /"groups" must be a map/);
    assert.throws(
      () =>
        parseDeployment(
          { ...good, groups: { web: { ...good.groups.default, maxReceiveCount: 0 } } },
          't',
        ),
      /groups\.web\.maxReceiveCount/,
    );
    assert.throws(
      () => parseDeployment({ ...good, routes: { 'images/': 'web' } } as never, 't'),
      /"routes"/,
    );
  });
});

test('sync retries transient failures at the same ETag, not permanent ones', () => {
  assert.equal(isPermanentFailureCode('ARCHIVE_PATH_ESCAPE'), true);
  assert.equal(isPermanentFailureCode('LIMIT_BLOB_SIZE'), true);
  assert.equal(isPermanentFailureCode('DOWNLOAD_FAILED'), false);
  assert.equal(isPermanentFailureCode('INTERRUPTED'), false);
  assert.equal(isPermanentFailureCode('LOW_SPACE'), false, 'a host problem');
  assert.equal(isPermanentFailureCode(null), false);
});

describe('fleet writer (dynalite)', () => {
  let dynamo: DynamoEmulator;
  const table = 'fleet-writer';
  before(async () => {
    dynamo = await startDynamoEmulator();
    await createFleetTable(dynamo.client, table);
  });
  after(() => dynamo?.stop());

  const item = (state: HostImageItem['state'], updatedAt: number): HostImageItem => ({
    pk: 'HOST#h1',
    sk: 'IMAGE#images/a.tar',
    gpk: 'IMAGE#images/a.tar',
    gsk: 'HOST#h1',
    hostId: 'h1',
    group: 'web',
    key: 'images/a.tar',
    eTag: '"e"',
    versionId: null,
    state,
    reasonCode: null,
    message: null,
    updatedAt,
  });

  test('an older state never overwrites a newer one', async () => {
    const t = new FleetTable(dynamo.client, table);
    assert.equal(await t.putHostImage(item('ready', 2000)), true);
    assert.equal(await t.putHostImage(item('processing', 1000)), false);
    assert.equal(
      (await readHostImageItem(dynamo.client, table, 'h1', 'images/a.tar'))?.state,
      'ready',
    );
  });

  test('a failing table: writes are retried, counted, and the newest version lands', async () => {
    let failuresLeft = 3;
    const real = new FleetTable(dynamo.client, table);
    const flaky = Object.assign(Object.create(real) as FleetTable, {
      putHostImage: async (i: HostImageItem) => {
        if (failuresLeft-- > 0) throw new Error('connect ECONNREFUSED 127.0.0.1:1');
        return real.putHostImage(i);
      },
    });
    const metrics = new FleetMetrics();
    const writer = new FleetWriter(flaky, {
      logger: silentLogger,
      metrics,
      baseDelayMs: 10,
      maxDelayMs: 50,
    });
    writer.image(item('processing', 3000));
    writer.image(item('failed', 3001));
    const deadline = Date.now() + 5000;
    while (writer.backlog > 0 && Date.now() < deadline) await sleep(20);
    assert.equal(writer.backlog, 0);
    assert.equal(metrics.writeFailures.get({ item: 'image' }), 3);
    assert.equal(metrics.writes.get({ item: 'image' }), 1, 'the superseded version is never sent');
    assert.equal(
      (await readHostImageItem(dynamo.client, table, 'h1', 'images/a.tar'))?.state,
      'failed',
    );
    assert.equal(await writer.close(100), 0);
  });
});
