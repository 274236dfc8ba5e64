/**
 * Stack output keys, and turning a `cdk deploy --outputs-file` file into one
 * host's agent.env. No CDK imports: infra/bin/agent-config.ts runs on an
 * operator's machine with only this and config.ts.
 */
import { hostOutputStem } from './config.js';

export const STACK_OUTPUTS = {
  bucket: 'ImagesBucketName',
  imagesPrefix: 'ImagesPrefix',
  region: 'Region',
  /** Comma-separated host names, so agent-config can say which hosts exist. */
  hosts: 'Hosts',
  fanoutFunction: 'FanoutFunctionName',
  failedEventsQueue: 'FailedEventsQueueUrl',
  operatorPolicy: 'OperatorPolicyArn',
  alarmTopic: 'AlarmTopicArn',
  rolesAnywhereProfile: 'RolesAnywhereProfileArn',
} as const;

export function hostOutputKeys(host: string) {
  const stem = `Host${hostOutputStem(host)}`;
  return {
    queueUrl: `${stem}QueueUrl`,
    dlqUrl: `${stem}DlqUrl`,
    roleArn: `${stem}RoleArn`,
    /** Only when hosts are EC2 instances. */
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

/** The /etc/thinrelay/agent.env of `host`, from its stack's outputs. */
export function agentEnv(
  outputs: Record<string, string>,
  host: string,
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
  // No Hosts output: the stack has no hosts.
  const hosts = (outputs[STACK_OUTPUTS.hosts] ?? '').split(',').filter((h) => h !== '');
  if (!hosts.includes(host)) {
    throw new AgentConfigError(
      `no host ${JSON.stringify(host)} in this stack (hosts: ${hosts.join(', ') || 'none'})`,
    );
  }
  const keys = hostOutputKeys(host);
  const lines = [
    `# thinrelay agent configuration for host ${host}`,
    `# Credentials: this host must act as ${need(keys.roleArn, 'host role ARN')}`,
    ...(outputs[keys.instanceProfile]
      ? [`#   (EC2: attach instance profile ${outputs[keys.instanceProfile]})`]
      : []),
    `AWS_REGION=${need(STACK_OUTPUTS.region, 'region')}`,
    `THINRELAY_BUCKET=${need(STACK_OUTPUTS.bucket, 'images bucket')}`,
    `THINRELAY_QUEUE_URL=${need(keys.queueUrl, 'host queue URL')}`,
    `THINRELAY_DLQ_URL=${need(keys.dlqUrl, 'host DLQ URL')}`,
  ];
  if (opts.backend !== undefined) lines.push(`THINRELAY_BACKEND=${opts.backend}`);
  if (opts.stateDir !== undefined) lines.push(`THINRELAY_STATE_DIR=${opts.stateDir}`);
  return `${lines.join('\n')}\n`;
}
