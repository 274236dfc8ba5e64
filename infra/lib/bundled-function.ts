/**
 * A thinrelay Lambda: one source file under lambda/src bundled locally with
 * esbuild (no Docker, offline) into one ESM file with the SDK and Powertools
 * inside, Node.js 26 on arm64, its own role and its own log group (not the
 * AWSLambdaBasicExecutionRole managed policy, which may write to every log
 * group in the account).
 */
import { fileURLToPath } from 'node:url';
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';

/** This file is dist/infra/lib/bundled-function.js once compiled; the repo root is three up. */
const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export interface BundledFunctionProps {
  functionName: string;
  description: string;
  /** Path under the repo root, e.g. lambda/src/handler.ts (export `handler`). */
  entry: string;
  memoryMiB: number;
  timeoutSeconds: number;
  logRetentionDays: number;
  environment: Record<string, string>;
  functionProps?: Partial<nodejs.NodejsFunctionProps>;
}

export interface BundledFunction {
  function: nodejs.NodejsFunction;
  role: iam.Role;
  logGroup: logs.LogGroup;
}

/** Creates `Logs`, `Role` and `Function` in `scope` (one construct per function, so ids stay stable). */
export function bundledFunction(scope: Construct, props: BundledFunctionProps): BundledFunction {
  const logGroup = new logs.LogGroup(scope, 'Logs', {
    logGroupName: `/aws/lambda/${props.functionName}`,
    retention: props.logRetentionDays as logs.RetentionDays,
    removalPolicy: RemovalPolicy.DESTROY,
  });
  const role = new iam.Role(scope, 'Role', {
    description: props.description,
    assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
  });
  logGroup.grantWrite(role);
  const fn = new nodejs.NodejsFunction(scope, 'Function', {
    functionName: props.functionName,
    description: props.description,
    entry: `${REPO_ROOT}${props.entry}`,
    handler: 'handler',
    projectRoot: REPO_ROOT,
    depsLockFilePath: `${REPO_ROOT}package-lock.json`,
    runtime: lambda.Runtime.NODEJS_26_X,
    architecture: lambda.Architecture.ARM_64,
    memorySize: props.memoryMiB,
    timeout: Duration.seconds(props.timeoutSeconds),
    role,
    logGroup,
    environment: props.environment,
    bundling: {
      format: nodejs.OutputFormat.ESM,
      target: 'node26',
      minify: true,
      sourceMap: false,
      // Bundle the AWS SDK too: the function runs the SDK version the
      // lockfile pins and the tests exercised, not whatever the runtime has.
      externalModules: [],
      mainFields: ['module', 'main'],
      // Some bundled CommonJS dependencies call require(): give ESM one.
      banner:
        "import { createRequire as __thinrelayRequire } from 'node:module'; const require = __thinrelayRequire(import.meta.url);",
      forceDockerBundling: false,
    },
    ...props.functionProps,
  });
  return { function: fn, role, logGroup };
}
