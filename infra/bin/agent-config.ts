/**
 * Prints a host group's /etc/thinrelay/agent.env (the same for every host of
 * the group) from the outputs of a deployed stack:
 *
 *   npx cdk deploy --outputs-file outputs.json
 *   node dist/infra/bin/agent-config.js --outputs outputs.json --group default > agent.env
 *
 * Options: --stack NAME (when the file has several stacks), --backend NAME,
 * --state-dir DIR (written as THINRELAY_BACKEND / THINRELAY_STATE_DIR).
 * Exit codes: 0 printed, 2 usage or a group/output not found.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { AgentConfigError, agentEnv, stackOutputs } from '../lib/outputs.js';

const USAGE =
  'usage: agent-config --outputs FILE --group NAME [--stack NAME] [--backend loop|devmapper] [--state-dir DIR]';

function main(argv: string[]): number {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        outputs: { type: 'string' },
        group: { type: 'string' },
        stack: { type: 'string' },
        backend: { type: 'string' },
        'state-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    console.error(`agent-config: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.outputs === undefined || values.group === undefined) {
    console.error(`agent-config: --outputs and --group are required\n${USAGE}`);
    return 2;
  }
  if (values.backend !== undefined && !['loop', 'devmapper'].includes(values.backend)) {
    console.error(
      `agent-config: --backend must be loop or devmapper, got ${JSON.stringify(values.backend)}`,
    );
    return 2;
  }
  let text: string;
  try {
    text = readFileSync(values.outputs, 'utf8');
  } catch (err) {
    console.error(`agent-config: cannot read ${values.outputs}: ${(err as Error).message}`);
    return 2;
  }
  try {
    const outputs = stackOutputs(text, values.stack ?? null);
    process.stdout.write(
      agentEnv(outputs, values.group, {
        ...(values.backend !== undefined ? { backend: values.backend } : {}),
        ...(values['state-dir'] !== undefined ? { stateDir: values['state-dir'] } : {}),
      }),
    );
    return 0;
  } catch (err) {
    if (!(err instanceof AgentConfigError)) throw err;
    console.error(`agent-config: ${values.outputs}: ${err.message}`);
    return 2;
  }
}

process.exitCode = main(process.argv.slice(2));
