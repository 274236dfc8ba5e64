/**
 * Every `thinrelay …` command line shown in README, docs/ and the other READMEs
 * (bench/, infra/, lambda/, host-agent/src/queue/) parses as
 * written: the command and subcommand exist and every option is one the
 * command takes. Each line runs with `--help` appended, so nothing happens
 * beyond the parse (no state dir, no AWS call).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runCli } from '../helpers/cli.js';
import { docCommands, type DocCommand } from '../helpers/doc-commands.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));

function markdownFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? markdownFiles(join(dir, e.name))
      : e.name.endsWith('.md')
        ? [join(dir, e.name)]
        : [],
  );
}

/** The subcommand words a command's usage lines name (`fleet status`, `pool create`, …). */
function subcommandsOf(command: string, help: string): Set<string> {
  const usage = help.split('\n\n')[1] ?? '';
  const re = new RegExp(`(?:^|[\\s|])${command} ([a-z][a-z-]+)`, 'g');
  return new Set([...usage.matchAll(re)].map((m) => m[1]!));
}

/** Global options that take a value (written before or after the command). */
const globalValueOptions = new Set(['--state-dir', '--backend', '--config']);

/** The command and the word right after it (a subcommand when the command has them). */
function commandWords(args: readonly string[]): [string | undefined, string | undefined] {
  let i = 0;
  while (i < args.length && args[i]!.startsWith('-')) i += globalValueOptions.has(args[i]!) ? 2 : 1;
  const next = args[i + 1];
  return [args[i], next === undefined || next.startsWith('-') ? undefined : next];
}

test('the command lines in README, docs/ and the other READMEs parse as written', async () => {
  const files = [
    join(repo, 'README.md'),
    ...markdownFiles(join(repo, 'docs')),
    join(repo, 'bench', 'README.md'),
    join(repo, 'infra', 'README.md'),
    join(repo, 'lambda', 'README.md'),
    join(repo, 'host-agent', 'src', 'queue', 'README.md'),
  ];
  const commands: DocCommand[] = files.flatMap((f) =>
    docCommands(relative(repo, f), readFileSync(f, 'utf8')),
  );
  assert.ok(commands.length >= 30, `found only ${commands.length} command lines`);
  const failures: string[] = [];
  const env = { THINRELAY_CONFIG_FILE: 'none', THINRELAY_STATE_DIR: '/nonexistent/thinrelay' };
  const queue = [...commands];
  const worker = async (): Promise<void> => {
    for (let c = queue.shift(); c !== undefined; c = queue.shift()) {
      const at = `${c.file}:${c.line}: ${c.text}`;
      const r = await runCli([...c.args, '--help'], env);
      if (r.code !== 0) {
        failures.push(`${at}\n    exit ${r.code}: ${r.stderr.trim().split('\n')[0]}`);
        continue;
      }
      const [command, sub] = commandWords(c.args);
      if (command === undefined || command === 'help' || sub === undefined) continue;
      const subs = subcommandsOf(command, r.stdout);
      if (subs.size > 0 && /^[a-z][a-z-]*$/.test(sub) && !subs.has(sub))
        failures.push(`${at}\n    "${sub}" is not one of ${[...subs].join(', ')}`);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  assert.deepEqual(failures, [], `command lines that do not parse:\n${failures.join('\n')}`);
});
