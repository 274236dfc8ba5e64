/**
 * The CDK app (cdk.json runs dist/infra/bin/thinrelay.js). Config comes from
 * infra/deployment.json or `-c deploymentFile=<path>`. The stack is environment-agnostic
 * (it deploys to the account and region of the credentials `cdk deploy` runs
 * with, and `npm run synth` needs none) unless `-c account=` / `-c region=`
 * pin it.
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { InfraConfigError, loadConfigFile } from '../lib/config.js';
import { ThinrelayStack } from '../lib/thinrelay-stack.js';

const app = new App();
const context = (key: string): string | undefined => {
  const v: unknown = app.node.tryGetContext(key);
  return typeof v === 'string' && v !== '' ? v : undefined;
};

try {
  const config = loadConfigFile(context('deploymentFile') ?? 'infra/deployment.json');
  const account = context('account');
  const region = context('region');
  new ThinrelayStack(app, config.stackName, {
    config,
    description: 'thinrelay: S3 images fanned out to per-host SQS queues',
    ...(account !== undefined || region !== undefined ? { env: { account, region } } : {}),
  });
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
} catch (err) {
  if (!(err instanceof InfraConfigError)) throw err;
  console.error(`thinrelay infra: bad config: ${err.message}`);
  process.exit(1);
}
