/**
 * The CLI's conventions, run as an operator runs them: global options
 * anywhere, version, help for every command, did-you-mean, positionals,
 * exit codes (and docs/operating-a-host.md's table of them), read-only commands that never
 * create state, the settings file, the backend check, one JSON style, and
 * journald priorities.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  closeSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ExitCode } from '../../host-agent/src/errors.js';
import { unpackTools } from '../../host-agent/src/ops/doctor.js';
import { StateStore } from '../../host-agent/src/store/index.js';
import { forScripts } from '../../host-agent/src/cli/output.js';
import { cliPath, runCli } from '../helpers/cli.js';

const repo = new URL('../../../', import.meta.url);
const pkg = JSON.parse(readFileSync(new URL('package.json', repo), 'utf8')) as { version: string };

let dir: string;
/** A state dir holding one failed image and one loop-backend object. */
let stateDir: string;
/** No settings file from this machine leaks into the runs. */
const env = { THINRELAY_CONFIG_FILE: 'none' };

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'thinrelay-cli-'));
  stateDir = join(dir, 'state');
  const store = StateStore.open(stateDir);
  const image = store.images.upsert({
    bucket: 'b',
    key: 'images/bad.tar',
    versionId: null,
    eTag: '"e1"',
    size: 10,
  });
  store.images.setStatus(image.id, 'failed', {
    errorCode: 'ARCHIVE_NOT_TAR',
    errorMessage: 'not a tar',
  });
  store.objects.createIntent({ kind: 'volume', backend: 'loop', sizeBytes: 1024 }, 'test');
  store.close();
});
after(() => rmSync(dir, { recursive: true, force: true }));

const oneLine = (s: string): string => s.trim().split('\n').pop() ?? '';

/** Every key of every object in a JSON value. */
function keysOf(v: unknown, out: string[] = []): string[] {
  if (Array.isArray(v)) v.forEach((x) => keysOf(x, out));
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) {
      out.push(k);
      keysOf(x, out);
    }
  return out;
}

describe('thinrelay CLI conventions', () => {
  test('global options before or after the command give the same result', async () => {
    const a = await runCli(['--state-dir', stateDir, '--json', 'images'], env);
    const b = await runCli(['images', '--json', `--state-dir=${stateDir}`], env);
    const c = await runCli(['--json', 'images', '--state-dir', stateDir], env);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, b.stdout);
    assert.equal(a.stdout, c.stdout);
    assert.equal((JSON.parse(a.stdout) as unknown[]).length, 1);
  });

  test('--version, -V, -v and `version` print the package version', async () => {
    for (const args of [['--version'], ['-V'], ['-v'], ['version'], ['images', '--version']]) {
      const r = await runCli(args, env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^thinrelay ${pkg.version.replace(/\./g, '\\.')} \\(`));
    }
  });

  test('help COMMAND = COMMAND --help: every option with text, variables, defaults, examples', async () => {
    const main = await runCli(['help'], env);
    assert.equal(main.code, 0);
    const names = [...main.stdout.matchAll(/^ {2}([a-z][a-z-]+) {2,}/gm)]
      .map((m) => m[1]!)
      .filter((n) => n !== 'help' && n !== 'version');
    assert.ok(names.length >= 15, names.join(' '));
    for (const name of names) {
      const help = await runCli(['help', name], env);
      const dash = await runCli([name, '--help'], env);
      assert.equal(help.code, 0, name);
      assert.equal(help.stdout, dash.stdout, name);
      assert.doesNotMatch(help.stdout, /\(undocumented\)/, `${name}: an option has no help text`);
      assert.match(help.stdout, /\nExamples:\n {2}thinrelay /, `${name}: no example`);
      const usage = /^Usage: (.*)$/m.exec(help.stdout)?.[1] ?? '';
      for (const [, opt] of usage.matchAll(/--([a-z0-9-]+)/g)) {
        assert.match(help.stdout, new RegExp(`\\n {2}.*--${opt}\\b.* {2}\\S`), `${name} --${opt}`);
      }
      for (const ex of help.stdout.trimEnd().split('\nExamples:\n')[1]!.split('\n')) {
        assert.ok(ex.startsWith('  thinrelay '), `${name}: example "${ex}"`);
      }
    }
    const globalHelp = await runCli(['help', 'images'], env);
    assert.match(
      globalHelp.stdout,
      /--state-dir DIR .*\[env THINRELAY_STATE_DIR; default \/var\/lib\/thinrelay\]/,
    );
  });

  test('a mistyped command or option: did-you-mean, exit 2; extra arguments are errors', async () => {
    const opt = await runCli(['process-image', '--s3-ky', 'foo'], env);
    assert.equal(opt.code, ExitCode.usage);
    assert.equal(
      oneLine(opt.stderr),
      'thinrelay: process-image: [USAGE] unknown option --s3-ky — did you mean --s3-key? see `thinrelay help process-image`',
    );
    const cmd = await runCli(['imagse'], env);
    assert.equal(cmd.code, ExitCode.usage);
    assert.match(oneLine(cmd.stderr), /unknown command "imagse" — did you mean "images"\?/);
    const extra = await runCli(['images', 'extra', '--state-dir', stateDir], env);
    assert.equal(extra.code, ExitCode.usage);
    assert.match(oneLine(extra.stderr), /\[USAGE\] unexpected argument: extra/);
    const two = await runCli(['show', 'a', 'b', '--state-dir', stateDir], env);
    assert.equal(two.code, ExitCode.usage);
    const missingValue = await runCli(['process-image', '--s3-key'], env);
    assert.equal(missingValue.code, ExitCode.usage);
    assert.match(oneLine(missingValue.stderr), /option --s3-key needs a value/);
    const bare = await runCli([], env);
    assert.equal(bare.code, ExitCode.usage);
  });

  test('a mistyped subcommand: did-you-mean and the usage on the one error line (no escaped newline)', async () => {
    for (const [args, guess] of [
      [['fleet', 'stauts'], 'status'],
      [['agent', 'deregistr'], 'deregister'],
      [['pool', 'stauts'], 'status'],
      [['dlq', 'peak'], 'peek'],
      [['state', 'bakup'], 'backup'],
    ] as const) {
      const r = await runCli([...args, '--state-dir', join(dir, 'none')], env);
      assert.equal(r.code, ExitCode.usage, r.stderr);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `^thinrelay: ${args[0]}: \\[USAGE\\] unknown ${args[0]} subcommand "${args[1]}" — did you mean "${guess}"\\? usage: thinrelay ${args[0]} `,
        ),
      );
      assert.doesNotMatch(r.stderr, /\\x0a/, 'a newline printed escaped');
    }
    // The forms of a usage of several lines, joined on the one line.
    const fleet = await runCli(['fleet', 'stauts'], env);
    assert.match(
      fleet.stderr,
      /\[--json\] \| thinrelay fleet hosts \[--json\] \| thinrelay fleet wait KEY/,
    );
    assert.equal(existsSync(join(dir, 'none')), false);
  });

  test('show says what the job serial is: its transition count, not an order between jobs', async () => {
    const shown = join(dir, 'shown');
    const store = StateStore.open(shown);
    const image = store.images.upsert({
      bucket: 'b',
      key: 'images/app.tar',
      versionId: null,
      eTag: '"e2"',
      size: 10,
    });
    const job = store.jobs.create(image.id, 'test', ['one', 'two']);
    store.jobs.setStatus(job.id, 'downloading');
    store.jobs.setStep(job.id, 0, 'running');
    const serial = store.jobs.get(job.id)!.serial;
    store.close();
    const r = await runCli(['show', 'images/app.tar', '--state-dir', shown], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      new RegExp(`^job ${job.id}: downloading {2}transitions ${serial} `, 'm'),
    );
    assert.doesNotMatch(r.stdout, /serial/);
    const readme = readFileSync(new URL('docs/operating-a-host.md', repo), 'utf8');
    assert.match(
      readme,
      /the job's transition count \(`serial` in JSON: each job or step transition adds one/,
    );
  });

  test('pool destroy without --force on a pool that holds objects is a usage refusal (exit 2)', async () => {
    const held = join(dir, 'held');
    const pool = join(held, 'pool');
    mkdirSync(pool, { recursive: true });
    writeFileSync(join(pool, 'vol-00000001.img'), '');
    const r = await runCli(['pool', 'destroy', '--state-dir', held], env);
    assert.equal(r.code, ExitCode.usage, r.stderr);
    assert.match(
      oneLine(r.stderr),
      /\[IN_USE\] pool .*still holds 1 object\(s\) — remove the images first, or use `pool destroy --force`/,
    );
    assert.ok(existsSync(join(pool, 'vol-00000001.img')), 'nothing destroyed');
  });

  test('read-only commands never create state: listings say none exists (exit 4), pool status and doctor describe a fresh host', async () => {
    const none = join(dir, 'typo');
    for (const args of [
      ['images'],
      ['snapshots'],
      ['failed'],
      ['show', 'x'],
      ['images', '--json'],
    ]) {
      const r = await runCli([...args, '--state-dir', none], env);
      assert.equal(r.code, ExitCode.notFound, `${args.join(' ')}: ${r.stderr}`);
      assert.match(oneLine(r.stderr), new RegExp(`\\[NO_STATE\\] no thinrelay state at ${none}`));
      // Under --json the error is also a document on stdout; without it, stdout stays empty.
      if (args.includes('--json'))
        assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'NO_STATE');
      else assert.equal(r.stdout, '');
    }
    // pool status and doctor describe a fresh host instead (docs/operating-a-host.md: exit 0): no pool yet is no verdict.
    const pool = await runCli(['pool', 'status', '--state-dir', none], env);
    assert.equal(pool.code, 0, pool.stderr);
    assert.match(pool.stdout, /^exists {4}false$/m);
    assert.doesNotMatch(pool.stdout, /healthy/);
    const poolJson = await runCli(['pool', 'status', '--json', '--state-dir', none], env);
    const status = JSON.parse(poolJson.stdout) as { exists: boolean; healthy: boolean | null };
    assert.deepEqual([status.exists, status.healthy], [false, null]);
    const doctor = await runCli(['doctor', '--state-dir', none], env);
    assert.equal(doctor.code, 0, doctor.stdout + doctor.stderr);
    assert.equal(existsSync(none), false, 'nothing created');
    const readme = readFileSync(new URL('docs/operating-a-host.md', repo), 'utf8').replace(
      /\s+/g,
      ' ',
    );
    assert.match(
      readme,
      /On a path holding no state, `images`, `snapshots`, `show` and `failed` say so and exit 4 \(`NO_STATE`\); `doctor` and `pool status` describe the fresh host and exit 0/,
    );
  });

  test('doctor passes on a fresh host with a fresh state dir, and creates nothing', async () => {
    const fresh = join(dir, 'fresh', 'state');
    const r = await runCli(['doctor', '--json', '--state-dir', fresh], env);
    const out = JSON.parse(r.stdout) as {
      ok: boolean;
      checks: { name: string; ok: boolean; advisory?: boolean }[];
    };
    // Advisory checks (the agent's settings, without --agent) warn and never fail doctor.
    assert.deepEqual(
      out.checks.filter((c) => !c.ok && c.advisory !== true),
      [],
    );
    assert.equal(out.ok, true);
    assert.equal(r.code, 0);
    for (const [tool] of unpackTools)
      assert.ok(
        out.checks.some((c) => c.name === tool),
        tool,
      );
    assert.equal(existsSync(join(dir, 'fresh')), false);
  });

  test("doctor's tool list covers every tool the unpack runs", () => {
    const src = new URL('host-agent/src/layer/', repo);
    const called = new Set<string>();
    for (const f of ['end-script.ts', 'special-files.ts', 'metadata.ts', 'times.ts']) {
      const text = readFileSync(new URL(f, src), 'utf8');
      for (const m of text.matchAll(/runTool(?:Sync)?\(\s*'([^']+)'(?:,\s*\[([^\]]*)\])?/g)) {
        called.add(m[1]!);
        // xargs runs the tool named among its arguments.
        for (const a of (m[2] ?? '').matchAll(/'([a-z][a-z0-9.]*)'/g)) called.add(a[1]!);
      }
    }
    assert.ok(called.has('perl') && called.has('setfattr'), [...called].join(' '));
    const listed = new Set(unpackTools.map(([t]) => t));
    assert.deepEqual(
      [...called].filter((t) => !listed.has(t)),
      [],
    );
  });

  test('one JSON style: one line, camelCase field names', async () => {
    const runs = [
      ['images', '--json', '--all'],
      ['failed', '--json'],
      ['snapshots', '--json'],
      ['show', 'images/bad.tar', '--json'],
      ['doctor', '--json'],
      ['pool', 'status', '--json'],
    ];
    for (const args of runs) {
      const r = await runCli([...args, '--state-dir', stateDir], env);
      assert.ok(r.code === 0 || args[0] === 'doctor', `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout.split('\n').length, 2, `${args[0]}: one line`);
      const keys = keysOf(JSON.parse(r.stdout));
      assert.deepEqual(
        keys.filter((k) => !/^[a-z][a-zA-Z0-9]*$/.test(k) || k === 'eTag'),
        [],
        args.join(' '),
      );
    }
    const failed = JSON.parse(
      (await runCli(['failed', '--json', '--state-dir', stateDir], env)).stdout,
    ) as {
      errorCode: string;
    }[];
    assert.equal(failed[0]?.errorCode, 'ARCHIVE_NOT_TAR');
  });

  test('JSON for scripts: `etag` without quotes everywhere, --version --json, an error is a document too', async () => {
    // The stored ETag is S3's quoted one; every document gives it bare, as events and the fleet table do.
    const images = JSON.parse(
      (await runCli(['images', '--json', '--all', '--state-dir', stateDir], env)).stdout,
    ) as Record<string, unknown>[];
    assert.equal(images[0]?.etag, 'e1');
    assert.equal(images[0] !== undefined && 'eTag' in images[0], false);
    // Nested documents (fleet hosts, dlq events) follow the same rule: one field name, one form.
    assert.deepEqual(
      forScripts({ etag: '"a"', hosts: [{ eTag: '"b"', key: 'k' }], events: [{ eTag: 'W/"c"' }] }),
      { etag: 'a', hosts: [{ etag: 'b', key: 'k' }], events: [{ etag: 'c' }] },
    );
    for (const args of [
      ['--version', '--json'],
      ['version', '--json'],
      ['images', '--version', '--json'],
    ]) {
      const v = await runCli(args, env);
      assert.equal(v.code, 0, v.stderr);
      const doc = JSON.parse(v.stdout) as { version: string; commit: string; node: string };
      assert.equal(doc.version, pkg.version, args.join(' '));
      assert.equal(doc.node, process.version);
    }
    // An error under --json: the one line on stderr and {error:{code,message,hint},exitCode} on stdout.
    for (const [args, code, exit] of [
      [
        ['show', 'images/none.tar', '--json', '--state-dir', stateDir],
        'NOT_FOUND',
        ExitCode.notFound,
      ],
      [['fleet', 'stauts', '--json'], 'USAGE', ExitCode.usage],
      [['imagse', '--json'], 'USAGE', ExitCode.usage],
      [['images', '--bogus', '--json'], 'USAGE', ExitCode.usage],
    ] as const) {
      const r = await runCli(args, env);
      assert.equal(r.code, exit, r.stderr);
      assert.match(oneLine(r.stderr), new RegExp(`^thinrelay: .*\\[${code}\\] `));
      assert.equal(r.stdout.split('\n').length, 2, `${args.join(' ')}: one line`);
      const doc = JSON.parse(r.stdout) as {
        error: { code: string; message: string; hint: string | null };
        exitCode: number;
      };
      assert.equal(doc.error.code, code, args.join(' '));
      assert.equal(doc.exitCode, exit);
      assert.ok(oneLine(r.stderr).includes(doc.error.message), args.join(' '));
    }
    const readme = readFileSync(new URL('docs/operating-a-host.md', repo), 'utf8').replace(
      /\s+/g,
      ' ',
    );
    assert.match(readme, /an ETag is always `etag`, without S3's quotes/);
    assert.match(readme, /`\{"error":\{"code","message","hint"\},"exitCode":N\}`/);
  });

  test('the settings file: read by the CLI; the environment and flags win; a named file must exist', async () => {
    const file = join(dir, 'agent.env');
    writeFileSync(
      file,
      `# written by agent-config\nTHINRELAY_STATE_DIR="${stateDir}"\nexport THINRELAY_BACKEND=loop\n`,
    );
    const fromFile = await runCli(['images', '--json'], { THINRELAY_CONFIG_FILE: file });
    assert.equal(fromFile.code, 0, fromFile.stderr);
    assert.equal((JSON.parse(fromFile.stdout) as unknown[]).length, 1);
    const envWins = await runCli(['images'], {
      THINRELAY_CONFIG_FILE: file,
      THINRELAY_STATE_DIR: join(dir, 'elsewhere'),
    });
    assert.equal(envWins.code, ExitCode.notFound);
    const flagWins = await runCli(['images', '--state-dir', join(dir, 'flag')], {
      THINRELAY_CONFIG_FILE: file,
    });
    assert.match(oneLine(flagWins.stderr), /no thinrelay state at .*\/flag/);
    const viaFlag = await runCli(['--config', file, 'images', '--json'], {
      THINRELAY_CONFIG_FILE: '',
    });
    assert.equal(viaFlag.code, 0, viaFlag.stderr);
    const missing = await runCli(['images'], { THINRELAY_CONFIG_FILE: join(dir, 'nope.env') });
    assert.equal(missing.code, ExitCode.usage);
    assert.match(oneLine(missing.stderr), /\[CONFIG\] cannot read the settings file/);
    writeFileSync(join(dir, 'bad.env'), 'THIS IS NOT AN ASSIGNMENT\n');
    const bad = await runCli(['images'], { THINRELAY_CONFIG_FILE: join(dir, 'bad.env') });
    assert.equal(bad.code, ExitCode.usage);
    assert.match(oneLine(bad.stderr), /bad\.env:1: expected KEY=VALUE/);
  });

  test('state whose objects belong to another backend is refused (exit 2)', async () => {
    const r = await runCli(['images', '--backend', 'devmapper', '--state-dir', stateDir], env);
    assert.equal(r.code, ExitCode.usage);
    assert.match(
      oneLine(r.stderr),
      /\[CONFIG\] the state in .* holds loop storage objects, but the configured backend is devmapper — use --backend loop/,
    );
  });

  test('a THINRELAY_DM_POOL that is no device-mapper name is a configuration error (exit 2) before any dmsetup', async () => {
    const r = await runCli(['pool', 'status', '--backend', 'devmapper'], {
      ...env,
      THINRELAY_STATE_DIR: join(dir, 'dm-name'),
      THINRELAY_DM_POOL: '--force',
    });
    assert.equal(r.code, ExitCode.usage, r.stderr);
    assert.match(
      oneLine(r.stderr),
      /\[CONFIG\] THINRELAY_DM_POOL "--force" is not a device-mapper name — the pool's name as `dmsetup ls` shows it/,
    );
  });

  test("a pool.json thinrelay cannot read is the host's fault (exit 3, POOL_UNAVAILABLE naming it), not a failed image", async () => {
    const state = join(dir, 'bad-pool-json');
    mkdirSync(join(state, 'dm'), { recursive: true });
    writeFileSync(join(state, 'dm', 'pool.json'), '{"name": "thinrelay-');
    const r = await runCli(['pool', 'status', '--backend', 'devmapper', '--json'], {
      ...env,
      THINRELAY_STATE_DIR: state,
    });
    assert.equal(r.code, ExitCode.environment, r.stderr);
    assert.match(
      oneLine(r.stderr),
      /\[POOL_UNAVAILABLE\] .*\/dm\/pool\.json is not a pool definition thinrelay can use: .*JSON/,
    );
    const doc = JSON.parse(r.stdout) as { error: { code: string }; exitCode: number };
    assert.deepEqual([doc.error.code, doc.exitCode], ['POOL_UNAVAILABLE', ExitCode.environment]);
  });

  test('a network failure is temporary: exit 75', async () => {
    const r = await runCli(['process-image', '--bucket', 'b', '--s3-key', 'k.tar'], {
      ...env,
      THINRELAY_STATE_DIR: join(dir, 'net'),
      AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:1',
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'x',
      AWS_SECRET_ACCESS_KEY: 'x',
      AWS_MAX_ATTEMPTS: '1',
    });
    assert.equal(r.code, ExitCode.temporary, r.stderr);
    assert.match(oneLine(r.stderr), /\[DOWNLOAD_FAILED\].*exit 75/);
  });

  test("the CLI doc's global-options example runs as written", async () => {
    const readme = readFileSync(new URL('docs/operating-a-host.md', repo), 'utf8');
    const block = /```sh\n(thinrelay --backend devmapper pool status --json[\s\S]*?)```/.exec(
      readme,
    )?.[1];
    assert.ok(block, 'the example block is in docs/operating-a-host.md');
    const outputs: string[] = [];
    for (const line of block.trim().split('\n')) {
      const args = line.replace(/#.*$/, '').trim().split(/\s+/).slice(1);
      const r = await runCli(args, { ...env, THINRELAY_STATE_DIR: join(dir, 'readme') });
      assert.equal(r.code, 0, `${line}: ${r.stderr}`);
      outputs.push(r.stdout);
    }
    assert.equal(outputs[0], outputs[1], 'global options before or after the command');
    assert.equal(existsSync(join(dir, 'readme')), false);
  });

  test("the CLI doc's exit-code table is errors.ts ExitCode", () => {
    const readme = readFileSync(new URL('docs/operating-a-host.md', repo), 'utf8');
    const section = readme.split('\n### Exit codes\n')[1]?.split('\n#')[0] ?? '';
    const rows = [...section.matchAll(/^\| (\d+) +\|/gm)].map((m) => Number(m[1]));
    assert.deepEqual(
      rows.sort((a, b) => a - b),
      Object.values(ExitCode).sort((a, b) => a - b),
    );
  });

  test('stderr on the journal: lines carry syslog priorities', async () => {
    const logFile = join(dir, 'journal.log');
    const fd = openSync(logFile, 'w');
    const st = statSync(logFile);
    const journal = `${st.dev}:${st.ino}`;
    try {
      // A usage error (no queue): the one error line is priority 3.
      const bad = spawn(process.execPath, [cliPath, 'agent'], {
        env: { ...process.env, ...env, JOURNAL_STREAM: journal, THINRELAY_QUEUE_URL: '' },
        stdio: ['ignore', 'ignore', fd],
      });
      assert.equal(await new Promise((r) => bad.on('close', r)), ExitCode.usage);
      // The daemon against a queue nobody answers: info at start (6), warnings on retry (4).
      const agent = spawn(process.execPath, [cliPath, 'agent'], {
        env: {
          ...process.env,
          ...env,
          JOURNAL_STREAM: journal,
          THINRELAY_LOG_LEVEL: 'info',
          THINRELAY_STATE_DIR: join(dir, 'agent-state'),
          THINRELAY_QUEUE_URL: 'http://127.0.0.1:1/123456789012/q',
          AWS_ENDPOINT_URL_SQS: 'http://127.0.0.1:1',
          THINRELAY_METRICS_ADDR: 'off',
          AWS_REGION: 'us-east-1',
          AWS_ACCESS_KEY_ID: 'x',
          AWS_SECRET_ACCESS_KEY: 'x',
          AWS_MAX_ATTEMPTS: '1',
        },
        stdio: ['ignore', 'ignore', fd],
      });
      const deadline = Date.now() + 20_000;
      while (!readFileSync(logFile, 'utf8').includes('<4>{') && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
      agent.kill('SIGTERM');
      await new Promise((r) => agent.on('close', r));
    } finally {
      closeSync(fd);
    }
    const lines = readFileSync(logFile, 'utf8').trim().split('\n');
    assert.match(lines[0]!, /^<3>thinrelay: agent: \[CONFIG\] no queue given/);
    assert.ok(
      lines.some((l) => /^<6>\{.*"msg":"agent started"/.test(l)),
      lines.join('\n'),
    );
    assert.ok(
      lines.some((l) => /^<4>\{.*"msg":"receive failed; retrying"/.test(l)),
      lines.join('\n'),
    );
    assert.ok(
      lines.every((l) => /^<[0-7]>/.test(l)),
      lines.join('\n'),
    );
  });
});
