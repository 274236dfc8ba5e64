/**
 * infra/bin/agent-config (the compiled CLI, run as a process) against fake
 * `cdk deploy --outputs-file` files. The keys come from lib/outputs.ts;
 * stack.test.ts checks the stack emits exactly those.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { groupOutputKeys, STACK_OUTPUTS } from '../../infra/lib/outputs.js';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../../infra/bin/agent-config.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'thinrelay-agent-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const web = groupOutputKeys('default');
const gpu = groupOutputKeys('gpu_a');
const outputs = {
  Thinrelay: {
    [STACK_OUTPUTS.bucket]: 'thinrelay-images-abc',
    [STACK_OUTPUTS.region]: 'eu-west-1',
    [STACK_OUTPUTS.fleetTable]: 'thinrelay-fleet',
    [STACK_OUTPUTS.groups]: 'default,gpu_a',
    [STACK_OUTPUTS.imagesPrefix]: 'images/',
    [web.roleArn]: 'arn:aws:iam::123456789012:role/Thinrelay-GroupDefaultRole',
    [web.instanceProfile]: 'Thinrelay-GroupDefaultInstanceProfile',
    [gpu.roleArn]: 'arn:aws:iam::123456789012:role/Thinrelay-GroupGpuARole',
  },
};
const file = join(dir, 'outputs.json');
writeFileSync(file, JSON.stringify(outputs));

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** agent.env lines that are assignments, as an object. */
function vars(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split('\n')
      .filter((l) => l !== '' && !l.startsWith('#'))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
}

test("prints a group's agent.env from the outputs file", async () => {
  const r = await cli('--outputs', file, '--group', 'default', '--backend', 'devmapper');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(vars(r.stdout), {
    AWS_REGION: 'eu-west-1',
    THINRELAY_BUCKET: 'thinrelay-images-abc',
    THINRELAY_FLEET_TABLE: 'thinrelay-fleet',
    THINRELAY_GROUP: 'default',
    THINRELAY_BACKEND: 'devmapper',
  });
  assert.match(
    r.stdout,
    /# Credentials: these hosts must act as arn:aws:iam::123456789012:role\/Thinrelay-GroupDefaultRole/,
  );
  assert.match(r.stdout, /instance profile Thinrelay-GroupDefaultInstanceProfile/);
});

test('one file per group, the same for each of its hosts; no instance profile line for non-EC2 groups', async () => {
  const r = await cli('--outputs', file, '--group', 'gpu_a', '--state-dir', '/srv/thinrelay');
  assert.equal(r.code, 0, r.stderr);
  const v = vars(r.stdout);
  assert.equal(v.THINRELAY_GROUP, 'gpu_a');
  assert.equal(v.THINRELAY_STATE_DIR, '/srv/thinrelay');
  assert.equal(v.THINRELAY_BACKEND, undefined);
  assert.equal(v.THINRELAY_QUEUE_URL, undefined, 'hosts name their own queues');
  assert.doesNotMatch(r.stdout, /instance profile/);
});

test('an unknown group is an error naming the groups that exist', async () => {
  const r = await cli('--outputs', file, '--group', 'web');
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /no group "web" in this stack \(groups: default, gpu_a\)/);
});

test('a stack without groups says so', async () => {
  const none = join(dir, 'none.json');
  const { [STACK_OUTPUTS.groups]: _groups, ...rest } = outputs.Thinrelay;
  writeFileSync(none, JSON.stringify({ Thinrelay: rest }));
  const r = await cli('--outputs', none, '--group', 'default');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /no group "default" in this stack \(groups: none\)/);
});

test('usage errors, a missing file, a file with several stacks, a missing output', async () => {
  assert.match((await cli('--group', 'default')).stderr, /--outputs and --group are required/);
  assert.match(
    (await cli('--outputs', file, '--group', 'default', '--backend', 'zfs')).stderr,
    /--backend must be/,
  );
  assert.match(
    (await cli('--outputs', file, '--group', 'x', '--host', 'web01')).stderr,
    /Unknown option '--host'/,
  );
  assert.match(
    (await cli('--outputs', join(dir, 'nope.json'), '--group', 'x')).stderr,
    /cannot read/,
  );

  const two = join(dir, 'two.json');
  writeFileSync(two, JSON.stringify({ ...outputs, Other: {} }));
  const r = await cli('--outputs', two, '--group', 'default');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /several stacks \(Thinrelay, Other\): pass --stack/);
  assert.equal((await cli('--outputs', two, '--group', 'default', '--stack', 'Thinrelay')).code, 0);
  assert.match(
    (await cli('--outputs', two, '--group', 'default', '--stack', 'Nope')).stderr,
    /stack "Nope" is not in the outputs file/,
  );

  const partial = join(dir, 'partial.json');
  const { [STACK_OUTPUTS.fleetTable]: _dropped, ...rest } = outputs.Thinrelay;
  writeFileSync(partial, JSON.stringify({ Thinrelay: rest }));
  const p = await cli('--outputs', partial, '--group', 'default');
  assert.equal(p.code, 2);
  assert.match(p.stderr, /output FleetTableName \(fleet table\) is missing/);

  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{not json');
  assert.match((await cli('--outputs', bad, '--group', 'default')).stderr, /not JSON/);
});
