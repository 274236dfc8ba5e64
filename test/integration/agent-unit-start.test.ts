/**
 * The systemd unit's start command as systemd would run it (the unit's
 * ExecStart line, its Environment= lines and the shipped agent.env template):
 * a config error ends with an exit status the unit does not restart on, with
 * the reason in the output (the journal); doctor --agent fails exactly when
 * `thinrelay agent` refuses its settings.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cliPath } from '../helpers/cli.js';

const repo = (p: string): string => fileURLToPath(new URL(`../../../${p}`, import.meta.url));
const unit = readFileSync(repo('deploy/systemd/thinrelay-agent.service'), 'utf8');
const template = readFileSync(repo('deploy/etc/agent.env'), 'utf8');

const dir = mkdtempSync(join(tmpdir(), 'thinrelay-unit-start-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** /usr/bin/thinrelay as the package installs it: the bundled CLI. */
const bin = join(dir, 'thinrelay');
writeFileSync(bin, `#!/bin/sh\nexec '${process.execPath}' '${cliPath}' "$@"\n`);
chmodSync(bin, 0o755);

/** KEY=VALUE lines of an EnvironmentFile (comments and blanks skipped). */
function envFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m !== null) out[m[1]!] = m[2]!;
  }
  return out;
}

/** The unit's own Environment= settings, the state dir moved into the test's dir. */
function unitEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [, k, v] of unit.matchAll(/^Environment=([A-Z_]+)=(.*)$/gm)) out[k!] = v!;
  out.THINRELAY_STATE_DIR = join(dir, 'state');
  out.THINRELAY_METRICS_ADDR = 'off';
  return out;
}

const execStart = /^ExecStart=(.+)$/m.exec(unit)![1]!.replaceAll('/usr/bin/thinrelay', bin);
const preventStatus = (/^RestartPreventExitStatus=(.+)$/m.exec(unit)?.[1] ?? '')
  .split(/\s+/)
  .filter((s) => s !== '')
  .map(Number);

function startAsSystemd(agentEnv: Record<string, string>): {
  status: number | null;
  out: string;
} {
  // systemd splits ExecStart like a shell (the line is `/bin/sh -c '…'`).
  const r = spawnSync('/bin/sh', ['-c', execStart], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...unitEnv(), ...agentEnv },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, out: r.stdout + r.stderr };
}

function cli(
  args: string[],
  agentEnv: Record<string, string>,
): { status: number | null; out: string; stdout: string } {
  const r = spawnSync(bin, args, {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...unitEnv(), ...agentEnv },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, out: r.stdout + r.stderr, stdout: r.stdout };
}

test('the unit does not restart on a usage/config exit (2)', () => {
  assert.deepEqual(preventStatus, [2]);
  assert.match(unit, /^Restart=on-failure$/m);
  assert.doesNotMatch(unit, /^ExecStartPre=/m, 'a failed ExecStartPre is restarted regardless');
});

test('with the template agent.env the start command exits 2 with the reason; so does the agent', () => {
  const env = envFile(template);
  assert.deepEqual(env, {}, 'the template sets nothing until agent-config fills it');
  const start = startAsSystemd(env);
  assert.ok(
    start.status !== null && preventStatus.includes(start.status),
    `exit ${start.status} must stop the unit (RestartPreventExitStatus=${preventStatus.join(' ')}):\n${start.out}`,
  );
  assert.match(start.out, /agent settings +FAIL +\[CONFIG\] no queue given/);
  const agent = cli(['agent'], env);
  assert.equal(agent.status, 2, agent.out);
  assert.match(agent.out, /\[CONFIG\] no queue given/);
});

test('doctor --agent fails exactly when the agent refuses its settings', () => {
  const cases: [string, Record<string, string>][] = [
    [
      'group with a bad heartbeat',
      {
        THINRELAY_GROUP: 'default',
        THINRELAY_FLEET_TABLE: 't',
        THINRELAY_HEARTBEAT_SECONDS: 'often',
      },
    ],
    ['group without a fleet table', { THINRELAY_GROUP: 'default' }],
    [
      'queue and group',
      {
        THINRELAY_GROUP: 'default',
        THINRELAY_FLEET_TABLE: 't',
        THINRELAY_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q',
      },
    ],
    ['not a queue URL', { THINRELAY_QUEUE_URL: 'sqs://q' }],
  ];
  for (const [what, env] of cases) {
    const doctor = cli(['doctor', '--agent'], env);
    const agent = cli(['agent'], env);
    assert.equal(agent.status, 2, `${what}: agent\n${agent.out}`);
    assert.equal(doctor.status, 2, `${what}: doctor --agent\n${doctor.out}`);
    assert.match(doctor.out, /agent settings +FAIL/, what);
  }
  // Plain doctor (a host that runs only the CLI) shows the line as a warning.
  const plain = cli(['doctor'], {});
  assert.match(plain.out, /agent settings +WARN/);
  assert.notEqual(plain.status, 2);
  // Valid settings pass the check.
  const ok = cli(['doctor', '--agent', '--json'], {
    THINRELAY_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/thinrelay-default-web01',
  });
  const report = JSON.parse(ok.stdout) as {
    checks: { name: string; ok: boolean }[];
  };
  assert.equal(report.checks.find((c) => c.name === 'agent settings')?.ok, true, ok.out);
});
