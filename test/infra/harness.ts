/**
 * Synthesizes the stack the way the app does (cdk.json's context and feature
 * flags) for template assertions, plus a small IAM evaluator that turns the
 * template's policies into concrete allow/deny answers for concrete ARNs.
 */
import { readFileSync } from 'node:fs';
import { App, type Environment } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { parseConfig, type ThinrelayConfig } from '../../infra/lib/config.js';
import { ThinrelayStack } from '../../infra/lib/thinrelay-stack.js';

// CDK's built-in CloudFormation rule validation loads a WASM engine (~10 s per
// process on this machine); `npm run synth` runs it on the real app, the
// template tests assert on the template themselves.
process.env.CDK_VALIDATION = 'false';

export const ACCOUNT = '123456789012';
export const REGION = 'eu-west-1';

/** Compiled to dist/test/infra/harness.js: the repo root is three up. */
export const REPO_ROOT = new URL('../../../', import.meta.url);

const cdkJson = JSON.parse(readFileSync(new URL('cdk.json', REPO_ROOT), 'utf8')) as {
  context: Record<string, unknown>;
};

export interface Synth {
  config: ThinrelayConfig;
  stack: ThinrelayStack;
  template: Template;
  json: TemplateJson;
  /** cdk-nag AwsSolutions findings left after the stack's acknowledgements. */
  nagViolations: { ruleName: string; paths: string[] }[];
}

export interface TemplateJson {
  Resources: Record<string, { Type: string; Properties?: Record<string, unknown> }>;
  Outputs?: Record<string, { Value: unknown; Description?: string }>;
}

/** One synth of `rawConfig`; bundling is skipped unless `bundle`. */
export function synth(
  rawConfig: unknown,
  opts: { env?: Environment; bundle?: boolean; outdir?: string } = {},
): Synth {
  const config = parseConfig(rawConfig);
  const app = new App({
    context: { ...cdkJson.context, ...(opts.bundle ? {} : { 'aws:cdk:bundling-stacks': [] }) },
    ...(opts.outdir !== undefined ? { outdir: opts.outdir } : {}),
  });
  const stack = new ThinrelayStack(app, config.stackName, {
    config,
    ...(opts.env ? { env: opts.env } : {}),
  });
  const template = Template.fromStack(stack);
  const report = new AwsSolutionsChecks().validateScope(app);
  return {
    config,
    stack,
    template,
    json: template.toJSON() as TemplateJson,
    nagViolations: report.violations.map((v) => ({
      ruleName: v.ruleName,
      paths: v.violatingResources.map((r) => r.constructPath ?? '?'),
    })),
  };
}

export const BASE_CONFIG = {
  namePrefix: 'thinrelay',
  imagesPrefix: 'images/',
  alarms: { email: 'ops@example.com' },
  groups: [{ name: 'default' }, { name: 'gpu', routes: ['images/gpu/'] }],
};

export function resourcesOfType(
  json: TemplateJson,
  type: string,
): [string, Record<string, unknown>][] {
  return Object.entries(json.Resources)
    .filter(([, r]) => r.Type === type)
    .map(([id, r]) => [id, r.Properties ?? {}]);
}

/** The logical id of the resource of `type` whose `prop` equals `value`. */
export function findId(json: TemplateJson, type: string, prop: string, value: unknown): string {
  const hits = resourcesOfType(json, type).filter(
    ([, p]) => JSON.stringify(p[prop]) === JSON.stringify(value),
  );
  if (hits.length !== 1)
    throw new Error(`${hits.length} ${type} with ${prop}=${JSON.stringify(value)}`);
  return hits[0]![0];
}

/**
 * CloudFormation values made concrete as they would be when deployed in
 * ACCOUNT/REGION: pseudo parameters, Refs and GetAtt Arn of the resource
 * types this stack uses, Fn::Join.
 */
export function concrete(json: TemplateJson, node: unknown): string {
  if (typeof node === 'string') return node;
  const o = node as Record<string, unknown>;
  if (Array.isArray(o['Fn::Join'])) {
    const [sep, items] = o['Fn::Join'] as [string, unknown[]];
    return items.map((i) => concrete(json, i)).join(sep);
  }
  if (typeof o.Ref === 'string') {
    const pseudo: Record<string, string> = {
      'AWS::Partition': 'aws',
      'AWS::Region': REGION,
      'AWS::AccountId': ACCOUNT,
      'AWS::URLSuffix': 'amazonaws.com',
    };
    if (pseudo[o.Ref] !== undefined) return pseudo[o.Ref]!;
    const r = resource(json, o.Ref);
    switch (r.Type) {
      case 'AWS::SQS::Queue':
        return `https://sqs.${REGION}.amazonaws.com/${ACCOUNT}/${str(r.Properties?.QueueName)}`;
      case 'AWS::S3::Bucket':
        return bucketName(json, o.Ref);
      case 'AWS::Lambda::Function':
      case 'AWS::DynamoDB::Table':
        return str(r.Properties?.FunctionName ?? r.Properties?.TableName);
      default:
        return `ref-${o.Ref}`;
    }
  }
  if (Array.isArray(o['Fn::GetAtt'])) {
    const [id, attr] = o['Fn::GetAtt'] as [string, string];
    const r = resource(json, id);
    if (attr === 'QueueName') return str(r.Properties?.QueueName);
    if (attr !== 'Arn') return `${id}.${attr}`;
    switch (r.Type) {
      case 'AWS::SQS::Queue':
        return `arn:aws:sqs:${REGION}:${ACCOUNT}:${str(r.Properties?.QueueName)}`;
      case 'AWS::S3::Bucket':
        return `arn:aws:s3:::${bucketName(json, id)}`;
      case 'AWS::Lambda::Function':
        return `arn:aws:lambda:${REGION}:${ACCOUNT}:function:${str(r.Properties?.FunctionName)}`;
      case 'AWS::Logs::LogGroup':
        return `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:${str(r.Properties?.LogGroupName)}:*`;
      case 'AWS::IAM::Role':
        return `arn:aws:iam::${ACCOUNT}:role/${id}`;
      case 'AWS::DynamoDB::Table':
        return `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${str(r.Properties?.TableName)}`;
      default:
        return `arn:unknown:${id}`;
    }
  }
  throw new Error(`cannot make concrete: ${JSON.stringify(node)}`);
}

function resource(json: TemplateJson, id: string) {
  const r = json.Resources[id];
  if (!r) throw new Error(`no resource ${id}`);
  return r;
}

function bucketName(json: TemplateJson, id: string): string {
  const name = resource(json, id).Properties?.BucketName;
  return typeof name === 'string' ? name : `generated-${id.toLowerCase()}`;
}

function str(v: unknown): string {
  if (typeof v !== 'string') throw new Error(`expected a literal string, got ${JSON.stringify(v)}`);
  return v;
}

export interface Statement {
  Effect: 'Allow' | 'Deny';
  Action: string[];
  Resource: string[];
  Condition?: unknown;
}

function statementsOf(json: TemplateJson, doc: unknown): Statement[] {
  const statements = (doc as { Statement: Record<string, unknown>[] }).Statement;
  return statements.map((s) => ({
    Effect: s.Effect as 'Allow' | 'Deny',
    Action: ([] as unknown[]).concat(s.Action).map(String),
    Resource: ([] as unknown[]).concat(s.Resource).map((r) => concrete(json, r)),
    ...(s.Condition !== undefined ? { Condition: s.Condition } : {}),
  }));
}

/** Every identity-policy statement of the role `roleId`: inline, attached AWS::IAM::Policy, managed. */
export function roleStatements(json: TemplateJson, roleId: string): Statement[] {
  const role = resource(json, roleId);
  const out: Statement[] = [];
  for (const p of (role.Properties?.Policies as { PolicyDocument: unknown }[] | undefined) ?? []) {
    out.push(...statementsOf(json, p.PolicyDocument));
  }
  if (role.Properties?.ManagedPolicyArns !== undefined) {
    throw new Error(
      `role ${roleId} has managed policies: ${JSON.stringify(role.Properties.ManagedPolicyArns)}`,
    );
  }
  for (const [, p] of resourcesOfType(json, 'AWS::IAM::Policy')) {
    const roles = (p.Roles as unknown[]).map((r) => JSON.stringify(r));
    if (roles.includes(JSON.stringify({ Ref: roleId })))
      out.push(...statementsOf(json, p.PolicyDocument));
  }
  return out;
}

export function managedPolicyStatements(json: TemplateJson, policyId: string): Statement[] {
  return statementsOf(json, resource(json, policyId).Properties?.PolicyDocument);
}

function glob(pattern: string, flags = ''): RegExp {
  const body = pattern
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${body}$`, flags);
}

/** What IAM knows about a request: condition keys and policy variables (multi-valued ones as lists). */
export type RequestContext = Record<string, string | string[]>;

/**
 * IAM's answer for one action on one resource in a request context: explicit
 * deny wins, then any allow. Policy variables (`${key}`) in resources and
 * condition values are filled from the context; a statement whose variable
 * has no value does not apply. Condition operators this stack uses are
 * evaluated; any other throws, so a new one cannot pass unexamined.
 */
export function allows(
  statements: Statement[],
  action: string,
  arn: string,
  context: RequestContext = {},
): boolean {
  const matches = (s: Statement) => {
    if (!s.Action.some((a) => glob(a, 'i').test(action))) return false;
    const resources = s.Resource.map((r) => substitute(r, context));
    if (!resources.some((r) => r !== null && glob(r).test(arn))) return false;
    return conditionsHold(s.Condition, context);
  };
  if (statements.some((s) => s.Effect === 'Deny' && matches(s))) return false;
  return statements.some((s) => s.Effect === 'Allow' && matches(s));
}

function substitute(value: string, context: RequestContext): string | null {
  let missing = false;
  const out = value.replace(/\$\{([^}]+)\}/g, (_, key: string) => {
    const v = context[key];
    if (typeof v !== 'string') {
      missing = true;
      return '';
    }
    return v;
  });
  return missing ? null : out;
}

function conditionsHold(condition: unknown, context: RequestContext): boolean {
  if (condition === undefined) return true;
  for (const [operator, block] of Object.entries(condition as Record<string, unknown>)) {
    for (const [key, raw] of Object.entries(block as Record<string, unknown>)) {
      const wanted = ([] as unknown[]).concat(raw).map(String);
      const got = context[key];
      const values = got === undefined ? [] : ([] as string[]).concat(got);
      const patterns = wanted.map((w) => substitute(w, context)).filter((w) => w !== null);
      const equals = (v: string) => patterns.includes(v);
      const like = (v: string) => patterns.some((p) => glob(p).test(v));
      switch (operator) {
        case 'StringEquals':
        case 'ArnEquals':
          if (values.length !== 1 || !equals(values[0]!)) return false;
          break;
        case 'StringLike':
        case 'ArnLike':
          if (values.length !== 1 || !like(values[0]!)) return false;
          break;
        case 'ForAllValues:StringEquals':
          if (!values.every(equals)) return false;
          break;
        case 'ForAllValues:StringLike':
          if (!values.every(like)) return false;
          break;
        case 'Null':
          if ((got === undefined) !== (wanted[0] === 'true')) return false;
          break;
        default:
          throw new Error(`condition operator ${operator} is not evaluated by this harness`);
      }
    }
  }
  return true;
}

export const queueArn = (name: string) => `arn:aws:sqs:${REGION}:${ACCOUNT}:${name}`;
