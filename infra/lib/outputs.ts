/**
 * Stack output keys, and turning a `cdk deploy --outputs-file` file into a
 * host group's agent.env (the same file for every host of the group: hosts
 * register themselves). No CDK imports: infra/bin/agent-config.ts runs on an
 * operator's machine with only this and config.ts.
 */
import { groupOutputStem } from './config.js';

export const STACK_OUTPUTS = {
  bucket: 'ImagesBucketName',
  imagesPrefix: 'ImagesPrefix',
  region: 'Region',
  fleetTable: 'FleetTableName',
  /** Comma-separated group names, so agent-config can say which groups exist. */
  groups: 'Groups',
  fanoutFunction: 'FanoutFunctionName',
  sweepFunction: 'SweepFunctionName',
  failedEventsQueue: 'FailedEventsQueueUrl',
  operatorPolicy: 'OperatorPolicyArn',
  alarmTopic: 'AlarmTopicArn',
  rolesAnywhereProfile: 'RolesAnywhereProfileArn',
} as const;

export function groupOutputKeys(group: string) {
  const stem = `Group${groupOutputStem(group)}`;
  return {
    roleArn: `${stem}RoleArn`,
    /** Only when the group's hosts are EC2 instances. */
    instanceProfile: `${stem}InstanceProfileName`,
  };
}

export class AgentConfigError extends Error {
  override name = 'AgentConfigError';
}

/** One stack's outputs from an outputs file ({"<stack>": {"<key>": "<value>"}}). */
export function stackOutputs(text: string, stackName: string | null): Record<string, string> {
  let file: unknown;
  try {
    file = JSON.parse(text);
  } catch (err) {
    throw new AgentConfigError(`outputs file is not JSON (${(err as Error).message})`);
  }
  if (typeof file !== 'object' || file === null || Array.isArray(file)) {
    throw new AgentConfigError(
      'outputs file must be an object {"<stack>": {"<output>": "<value>"}}',
    );
  }
  const stacks = Object.keys(file);
  const name = stackName ?? (stacks.length === 1 ? stacks[0] : undefined);
  if (name === undefined) {
    throw new AgentConfigError(
      stacks.length === 0
        ? 'outputs file has no stacks'
        : `outputs file has several stacks (${stacks.join(', ')}): pass --stack`,
    );
  }
  const outputs = (file as Record<string, unknown>)[name];
  if (typeof outputs !== 'object' || outputs === null) {
    throw new AgentConfigError(
      `stack ${JSON.stringify(name)} is not in the outputs file (it has: ${stacks.join(', ')})`,
    );
  }
  const result: Record<string, string> = {};
  for (const [k, v] of Object.entries(outputs)) {
    if (typeof v === 'string') result[k] = v;
  }
  return result;
}

export interface AgentEnvOptions {
  backend?: string;
  stateDir?: string;
}

/** The /etc/thinrelay/agent.env of every host of `group`, from its stack's outputs. */
export function agentEnv(
  outputs: Record<string, string>,
  group: string,
  opts: AgentEnvOptions = {},
): string {
  const need = (key: string, what: string): string => {
    const v = outputs[key];
    if (v === undefined || v === '') {
      throw new AgentConfigError(
        `output ${key} (${what}) is missing: is the stack deployed from this infra/ version?`,
      );
    }
    return v;
  };
  // No Groups output: the stack has no groups.
  const groups = (outputs[STACK_OUTPUTS.groups] ?? '').split(',').filter((g) => g !== '');
  if (!groups.includes(group)) {
    throw new AgentConfigError(
      `no group ${JSON.stringify(group)} in this stack (groups: ${groups.join(', ') || 'none'})`,
    );
  }
  const keys = groupOutputKeys(group);
  const lines = [
    `# thinrelay agent configuration for the hosts of group ${group}`,
    `# Credentials: these hosts must act as ${need(keys.roleArn, 'group role ARN')}`,
    ...(outputs[keys.instanceProfile]
      ? [
          `#   (EC2: launch them with instance profile ${outputs[keys.instanceProfile]}, e.g. in the launch template)`,
        ]
      : []),
    `AWS_REGION=${need(STACK_OUTPUTS.region, 'region')}`,
    `THINRELAY_BUCKET=${need(STACK_OUTPUTS.bucket, 'images bucket')}`,
    `THINRELAY_FLEET_TABLE=${need(STACK_OUTPUTS.fleetTable, 'fleet table')}`,
    `THINRELAY_GROUP=${group}`,
  ];
  if (opts.backend !== undefined) lines.push(`THINRELAY_BACKEND=${opts.backend}`);
  if (opts.stateDir !== undefined) lines.push(`THINRELAY_STATE_DIR=${opts.stateDir}`);
  return `${lines.join('\n')}\n`;
}
