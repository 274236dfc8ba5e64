/** infra/lib/config.ts: defaults, derived names, and a clear error for each kind of bad input. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  hostOutputStem,
  InfraConfigError,
  loadConfigFile,
  names,
  parseConfig,
} from '../../infra/lib/config.js';

const hosts = [{ name: 'web01', group: 'default' }];

function rejects(value: unknown, path: string, message: RegExp): void {
  assert.throws(
    () => parseConfig(value),
    (err: unknown) => {
      assert.ok(err instanceof InfraConfigError, String(err));
      assert.equal(err.path, path);
      assert.match(err.message, message);
      return true;
    },
  );
}

test('defaults fill everything but the hosts', () => {
  const c = parseConfig({ hosts });
  assert.equal(c.stackName, 'Thinrelay');
  assert.equal(c.namePrefix, 'thinrelay');
  assert.equal(c.imagesPrefix, 'images/');
  assert.deepEqual(c.imageSuffixes, ['.tar', '.tar.gz', '.tgz']);
  assert.deepEqual(c.routes, {});
  assert.deepEqual(c.queues, {
    maxReceiveCount: 5,
    visibilityTimeoutSeconds: 300,
    retentionDays: 4,
  });
  assert.equal(c.fanout.maxEventAgeSeconds, 21600);
  assert.deepEqual(c.hostPrincipal, { type: 'ec2' });
  assert.deepEqual(c.alarms, { email: null, topicArn: null });
  assert.deepEqual(c.hosts, hosts);
  assert.deepEqual(parseConfig({ hosts: [] }).hosts, [], 'a fleet may be empty');
  assert.deepEqual(parseConfig({ hosts: [{ name: 'a1' }] }).hosts, [
    { name: 'a1', group: 'default' },
  ]);
});

test("derived names follow the Lambda's discovery and routing convention", () => {
  const c = parseConfig({ namePrefix: 'tr', hosts: [{ name: 'web-01', group: 'gpu_a' }] });
  const h = c.hosts[0]!;
  assert.equal(names.hostQueuePrefix(c), 'tr-host-');
  assert.equal(names.hostQueue(c, h), 'tr-host-gpu_a-web-01');
  assert.equal(names.dlq(c, h), 'tr-dlq-gpu_a-web-01');
  assert.ok(
    !names.dlq(c, h).startsWith(names.hostQueuePrefix(c)),
    'DLQs are never discovered as hosts',
  );
  assert.ok(!names.failedEventsQueue(c).startsWith(names.hostQueuePrefix(c)));
  assert.equal(hostOutputStem('web-01'), 'Web01');
});

test('routes: a group or a list, under the images prefix, to groups that have hosts', () => {
  const c = parseConfig({
    routes: { 'images/gpu/': 'gpu', 'images/db/': ['db', 'default'] },
    hosts: [...hosts, { name: 'g1', group: 'gpu' }, { name: 'd1', group: 'db' }],
  });
  assert.deepEqual(c.routes, { 'images/gpu/': ['gpu'], 'images/db/': ['db', 'default'] });
  rejects(
    { routes: { 'other/': 'default' }, hosts },
    '$.routes["other/"]',
    /must start with imagesPrefix "images\/"/,
  );
  rejects(
    { routes: { 'images/x/': 'nobody' }, hosts },
    '$.routes["images/x/"]',
    /group "nobody" has no hosts/,
  );
  rejects(
    { routes: { 'images/x/': 'a-b' }, hosts },
    '$.routes["images/x/"]',
    /letters, digits and _/,
  );
  rejects({ routes: { 'images/x/': [] }, hosts }, '$.routes["images/x/"]', /non-empty/);
  rejects({ routes: ['images/'], hosts }, '$.routes', /must be an object/);
});

test('hosts: names, groups, duplicates, collisions, queue name length', () => {
  rejects({}, '$.hosts', /required/);
  rejects({ hosts: {} }, '$.hosts', /must be a list/);
  rejects({ hosts: [{ group: 'default' }] }, '$.hosts[0].name', /required/);
  rejects({ hosts: [{ name: 'web_01' }] }, '$.hosts[0].name', /letters, digits and '-'/);
  rejects({ hosts: [{ name: '-web' }] }, '$.hosts[0].name', /not at either end/);
  rejects(
    { hosts: [{ name: 'web01', group: 'a-b' }] },
    '$.hosts[0].group',
    /'-' separates group from host/,
  );
  rejects({ hosts: [{ name: 'web01', rack: 3 }] }, '$.hosts[0]', /unknown key\(s\) "rack"/);
  rejects(
    { hosts: [...hosts, { name: 'web01', group: 'gpu' }] },
    '$.hosts[1].name',
    /listed twice/,
  );
  rejects(
    { hosts: [{ name: 'web-01' }, { name: 'Web01' }] },
    '$.hosts[1].name',
    /collides with "web-01"/,
  );
  const long = 'h'.repeat(60);
  rejects({ hosts: [{ name: long }] }, '$.hosts[0]', /longer than SQS's 80 characters/);
  assert.equal(
    parseConfig({ namePrefix: 'a', hosts: [{ name: 'h'.repeat(70), group: 'g' }] }).hosts.length,
    1,
  );
});

test('numbers, strings and sections are checked with their path', () => {
  rejects(
    { hosts, queues: { maxReceiveCount: 0 } },
    '$.queues.maxReceiveCount',
    /from 1 to 1000, got 0/,
  );
  rejects({ hosts, queues: { retentionDays: 14 } }, '$.queues.retentionDays', /from 1 to 13/);
  rejects(
    { hosts, queues: { visibilityTimeoutSeconds: 1.5 } },
    '$.queues.visibilityTimeoutSeconds',
    /whole number/,
  );
  rejects(
    { hosts, fanout: { logRetentionDays: 31 } },
    '$.fanout.logRetentionDays',
    /must be one of 1, 3, 5/,
  );
  rejects(
    { hosts, fanout: { maxEventAgeSeconds: 30000 } },
    '$.fanout.maxEventAgeSeconds',
    /60 to 21600/,
  );
  rejects({ hosts, imagesPrefix: 'images' }, '$.imagesPrefix', /ends with '\/'/);
  rejects({ hosts, imagesPrefix: '/images/' }, '$.imagesPrefix', /no leading/);
  rejects({ hosts, namePrefix: 'thin relay' }, '$.namePrefix', /letters, digits, - and _/);
  rejects({ hosts, imageSuffixes: ['.tar,.tgz'] }, '$.imageSuffixes', /without commas/);
  rejects({ hosts, bucket: { name: 'Bad_Bucket' } }, '$.bucket.name', /an S3 bucket name/);
  rejects({ hosts, queues: 5 }, '$.queues', /must be an object/);
  rejects({ hosts, queue: {} }, '$', /unknown key\(s\) "queue"/);
  assert.equal(parseConfig({ $comment: 'notes are fine', hosts }).hosts.length, 1);
});

test('alarms: an e-mail or a topic ARN, not both', () => {
  assert.equal(
    parseConfig({ hosts, alarms: { email: 'ops@example.com' } }).alarms.email,
    'ops@example.com',
  );
  rejects({ hosts, alarms: { email: 'nobody' } }, '$.alarms.email', /e-mail/);
  rejects(
    { hosts, alarms: { topicArn: 'arn:aws:sqs:eu-west-1:123456789012:x' } },
    '$.alarms.topicArn',
    /SNS topic ARN/,
  );
  rejects(
    { hosts, alarms: { email: 'a@b.c', topicArn: 'arn:aws:sns:eu-west-1:123456789012:ops' } },
    '$.alarms',
    /not both/,
  );
});

test('host principal: ec2, rolesAnywhere with a trust anchor, or an IAM principal ARN', () => {
  const anchor =
    'arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/0b7d8f2e-1c3a-4e5f-9a6b-7c8d9e0f1a2b';
  assert.deepEqual(
    parseConfig({ hosts, hostPrincipal: { type: 'rolesAnywhere', trustAnchorArn: anchor } })
      .hostPrincipal,
    {
      type: 'rolesAnywhere',
      trustAnchorArn: anchor,
    },
  );
  const arn = 'arn:aws:iam::123456789012:role/fleet-hosts';
  assert.deepEqual(
    parseConfig({ hosts, hostPrincipal: { type: 'aws', principalArn: arn } }).hostPrincipal,
    {
      type: 'aws',
      principalArn: arn,
    },
  );
  rejects(
    { hosts, hostPrincipal: { type: 'rolesAnywhere' } },
    '$.hostPrincipal.trustAnchorArn',
    /required/,
  );
  rejects({ hosts, hostPrincipal: { type: 'aws' } }, '$.hostPrincipal.principalArn', /required/);
  rejects({ hosts, hostPrincipal: { type: 'gcp' } }, '$.hostPrincipal.type', /one of 'ec2'/);
  rejects(
    { hosts, hostPrincipal: { type: 'ec2', trustAnchorArn: anchor } },
    '$.hostPrincipal',
    /unknown key/,
  );
});

const dir = mkdtempSync(join(tmpdir(), 'thinrelay-infra-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('loadConfigFile: errors name the file; the shipped infra/hosts.json is valid', () => {
  const missing = join(dir, 'missing.json');
  assert.throws(
    () => loadConfigFile(missing),
    new RegExp(`^InfraConfigError: ${missing}: cannot read`),
  );
  const broken = join(dir, 'broken.json');
  writeFileSync(broken, '{"hosts": [');
  assert.throws(() => loadConfigFile(broken), /broken\.json: not JSON/);
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ hosts: [{ name: 'a b' }] }));
  assert.throws(
    () => loadConfigFile(bad),
    (err: unknown) => {
      assert.ok(err instanceof InfraConfigError);
      assert.equal(err.path, bad);
      assert.match(err.message, /\$\.hosts\[0\]\.name: must be letters/);
      return true;
    },
  );
  const shipped = loadConfigFile(
    fileURLToPath(new URL('../../../infra/hosts.json', import.meta.url)),
  );
  assert.ok(shipped.hosts.length >= 2);
});
