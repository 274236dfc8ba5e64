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
import { hostOutputKeys, STACK_OUTPUTS } from '../../infra/lib/outputs.js';

const run = promisify(execFile);
const CLI = fileURLToPath(new URL('../../infra/bin/agent-config.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'thinrelay-agent-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const Q = 'https://sqs.eu-west-1.amazonaws.com/123456789012';
const web = hostOutputKeys('web-01');
const gpu = hostOutputKeys('gpu01');
const outputs = {
  Thinrelay: {
    [STACK_OUTPUTS.bucket]: 'thinrelay-images-abc',
    [STACK_OUTPUTS.region]: 'eu-west-1',
    [STACK_OUTPUTS.hosts]: 'web-01,gpu01',
    [STACK_OUTPUTS.imagesPrefix]: 'images/',
    [web.queueUrl]: `${Q}/thinrelay-host-default-web-01`,
    [web.dlqUrl]: `${Q}/thinrelay-dlq-default-web-01`,
    [web.roleArn]: 'arn:aws:iam::123456789012:role/Thinrelay-HostWeb01Role',
    [web.instanceProfile]: 'Thinrelay-HostWeb01InstanceProfile',
    [gpu.queueUrl]: `${Q}/thinrelay-host-gpu-gpu01`,
    [gpu.dlqUrl]: `${Q}/thinrelay-dlq-gpu-gpu01`,
    [gpu.roleArn]: 'arn:aws:iam::123456789012:role/Thinrelay-HostGpu01Role',
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

test("prints a host's agent.env from the outputs file", async () => {
  const r = await cli('--outputs', file, '--host', 'web-01', '--backend', 'devmapper');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(vars(r.stdout), {
    AWS_REGION: 'eu-west-1',
    THINRELAY_BUCKET: 'thinrelay-images-abc',
    THINRELAY_QUEUE_URL: `${Q}/thinrelay-host-default-web-01`,
    THINRELAY_DLQ_URL: `${Q}/thinrelay-dlq-default-web-01`,
    THINRELAY_BACKEND: 'devmapper',
  });
  assert.match(
    r.stdout,
    /# Credentials: this host must act as arn:aws:iam::123456789012:role\/Thinrelay-HostWeb01Role/,
  );
  assert.match(r.stdout, /instance profile Thinrelay-HostWeb01InstanceProfile/);
});

test('each host gets its own queue; no instance profile line for non-EC2 hosts', async () => {
  const r = await cli('--outputs', file, '--host', 'gpu01', '--state-dir', '/srv/thinrelay');
  assert.equal(r.code, 0, r.stderr);
  const v = vars(r.stdout);
  assert.equal(v.THINRELAY_QUEUE_URL, `${Q}/thinrelay-host-gpu-gpu01`);
  assert.equal(v.THINRELAY_DLQ_URL, `${Q}/thinrelay-dlq-gpu-gpu01`);
  assert.equal(v.THINRELAY_STATE_DIR, '/srv/thinrelay');
  assert.equal(v.THINRELAY_BACKEND, undefined);
  assert.doesNotMatch(r.stdout, /instance profile/);
});

test('an unknown host is an error naming the hosts that exist', async () => {
  const r = await cli('--outputs', file, '--host', 'web02');
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  assert.match(r.stderr, /no host "web02" in this stack \(hosts: web-01, gpu01\)/);
});

test('a stack without hosts says so', async () => {
  const none = join(dir, 'none.json');
  const { [STACK_OUTPUTS.hosts]: _hosts, ...rest } = outputs.Thinrelay;
  writeFileSync(none, JSON.stringify({ Thinrelay: rest }));
  const r = await cli('--outputs', none, '--host', 'web-01');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /no host "web-01" in this stack \(hosts: none\)/);
});

test('usage errors, a missing file, a file with several stacks, a missing output', async () => {
  assert.match((await cli('--host', 'web-01')).stderr, /--outputs and --host are required/);
  assert.match(
    (await cli('--outputs', file, '--host', 'web-01', '--backend', 'zfs')).stderr,
    /--backend must be/,
  );
  assert.match(
    (await cli('--outputs', file, '--host', 'x', '--bogus')).stderr,
    /Unknown option '--bogus'/,
  );
  assert.match(
    (await cli('--outputs', join(dir, 'nope.json'), '--host', 'x')).stderr,
    /cannot read/,
  );

  const two = join(dir, 'two.json');
  writeFileSync(two, JSON.stringify({ ...outputs, Other: {} }));
  const r = await cli('--outputs', two, '--host', 'web-01');
  assert.equal(r.code, 2);
  assert.match(r.stderr, /several stacks \(Thinrelay, Other\): pass --stack/);
  assert.equal((await cli('--outputs', two, '--host', 'web-01', '--stack', 'Thinrelay')).code, 0);
  assert.match(
    (await cli('--outputs', two, '--host', 'web-01', '--stack', 'Nope')).stderr,
    /stack "Nope" is not in the outputs file/,
  );

  const partial = join(dir, 'partial.json');
  const { [web.dlqUrl]: _dropped, ...rest } = outputs.Thinrelay;
  writeFileSync(partial, JSON.stringify({ Thinrelay: rest }));
  const p = await cli('--outputs', partial, '--host', 'web-01');
  assert.equal(p.code, 2);
  assert.match(p.stderr, /output HostWeb01DlqUrl \(host DLQ URL\) is missing/);

  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{not json');
  assert.match((await cli('--outputs', bad, '--host', 'web-01')).stderr, /not JSON/);
});
