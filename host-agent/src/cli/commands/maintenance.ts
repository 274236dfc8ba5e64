/** thinrelay gc | doctor | state backup FILE. */
import { collectGarbage } from '../../ops/gc.js';
import { agentSettingsCheckName, runDoctor } from '../../ops/doctor.js';
import { ExitCode, UsageError } from '../../errors.js';
import type { Command, CommandContext } from '../command.js';
import { printJson, printTable, usageHint } from '../output.js';
import { unknownSubcommand } from '../help.js';

async function gc(ctx: CommandContext): Promise<number> {
  const rt = ctx.runtime();
  const actions = await collectGarbage(rt, { heldForSignature: true });
  if (ctx.json) printJson({ actions });
  else if (actions.length === 0) process.stdout.write('nothing to collect\n');
  else
    printTable(
      ['OBJECT', 'ACTION', 'REASON'],
      actions.map((a) => [a.object, a.action, a.reason]),
    );
  return actions.some((a) => a.action === 'failed') ? 1 : 0;
}

async function doctor(ctx: CommandContext): Promise<number> {
  const agent = ctx.values.agent === true;
  const checks = await runDoctor(ctx.config(), { agent });
  if (ctx.json) printJson({ ok: checks.every((c) => c.ok || c.advisory === true), checks });
  else
    printTable(
      ['CHECK', 'RESULT', 'DETAIL', 'FIX'],
      checks.map((c) => [
        c.name,
        c.ok ? 'pass' : c.advisory === true ? 'WARN' : 'FAIL',
        c.detail,
        c.ok ? '' : c.hint,
      ]),
    );
  // Advisory failures (low space) warn; they never keep the agent from starting.
  // The agent's own settings failing is a config error: exit 2, as the agent would.
  if (checks.some((c) => !c.ok && c.advisory !== true && c.name === agentSettingsCheckName))
    return ExitCode.usage;
  return checks.every((c) => c.ok || c.advisory === true) ? ExitCode.ok : ExitCode.environment;
}

async function state(ctx: CommandContext): Promise<number> {
  const [sub, file] = ctx.positionals;
  if (sub !== 'backup') throw unknownSubcommand(stateCommand, sub, ['backup']);
  if (file === undefined)
    throw new UsageError('USAGE', 'missing FILE', usageHint(stateCommand.usage));
  const rt = ctx.runtime();
  await rt.store.backup(file);
  if (ctx.json) printJson({ backup: file });
  else process.stdout.write(`state database backed up to ${file}\n`);
  return 0;
}

export const gcCommand: Command = {
  name: 'gc',
  summary: 'release what the database does not account for, and failed leftovers',
  usage: 'thinrelay gc [--json]',
  options: {},
  examples: ['thinrelay gc'],
  run: gc,
};

export const doctorCommand: Command = {
  name: 'doctor',
  summary:
    'check this host: root, loop/dm, every tool the unpack uses, free space, database integrity, pool health (read-only)',
  usage: 'thinrelay doctor [--agent] [--json]',
  options: { agent: { type: 'boolean' } },
  optionDocs: {
    agent: {
      text: "also require the agent's settings (queue or group, fleet table, tuning) to be valid: exit 2 when `thinrelay agent` would",
    },
  },
  examples: [
    'thinrelay doctor',
    'thinrelay doctor --agent',
    'thinrelay --backend devmapper doctor --json',
  ],
  run: doctor,
};

export const stateCommand: Command = {
  name: 'state',
  summary: 'online backup of the state database',
  usage: 'thinrelay state backup FILE',
  options: {},
  examples: ['thinrelay state backup /var/backups/thinrelay-images.db'],
  run: state,
};
