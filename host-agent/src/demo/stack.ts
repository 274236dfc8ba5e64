/**
 * npm run stack: the whole AWS side of thinrelay on 127.0.0.1, in the
 * foreground, until Ctrl-C or SIGTERM (local-stack.ts). When ready it prints
 * `export VAR=value` lines for agents and the `fleet` commands, then READY;
 * fan-out activity goes to stderr. Stopping removes everything it made.
 *
 * Run with node --openssl-legacy-provider (package.json does): s3rver's
 * ListObjectsV2 continuation tokens use DES, which OpenSSL 3 keeps in its
 * legacy provider; without it any listing past 1,000 keys fails with 500.
 *
 * Options: --bucket NAME (default thinrelay-images), --group NAME (repeatable;
 * default `default`), --stale-after SECONDS.
 */
import { parseArgs } from 'node:util';
import { errorMessage } from '../errors.js';
import { startLocalStack, type LocalStack } from './local-stack.js';

function fail(message: string): never {
  process.stderr.write(`thinrelay stack: ${message}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        bucket: { type: 'string', default: 'thinrelay-images' },
        group: { type: 'string', multiple: true },
        'stale-after': { type: 'string', default: '180' },
      },
    }));
  } catch (err) {
    fail(`${(err as Error).message}; usage: npm run stack -- [--bucket NAME] [--group NAME]...`);
  }
  const groups = values.group ?? ['default'];
  for (const g of groups) if (!/^[A-Za-z0-9_]{1,32}$/.test(g)) fail(`bad group name "${g}"`);
  const staleAfterSeconds = Number(values['stale-after']);
  if (!Number.isInteger(staleAfterSeconds) || staleAfterSeconds < 1)
    fail('--stale-after must be a whole number of seconds');

  const running: { stack?: LocalStack } = {};
  let exitCode: number | undefined;
  const stop = (code: number): void => {
    if (exitCode !== undefined) return;
    exitCode = code;
    // Still starting: main stops the stack once it exists.
    if (running.stack === undefined) return;
    process.stderr.write('stopping: emulators closed, their data removed\n');
    void running.stack.stop().finally(() => process.exit(code));
  };
  process.on('SIGINT', () => stop(130));
  process.on('SIGTERM', () => stop(143));

  const stack = await startLocalStack({
    bucket: values.bucket,
    groups,
    maxReceiveCount: 5,
    staleAfterSeconds,
    onFanout: ({ key, eventName, error }) =>
      process.stderr.write(
        error === undefined
          ? `fan-out: ${eventName} ${key}\n`
          : `fan-out: ${eventName} ${key} FAILED: ${errorMessage(error)}\n`,
      ),
  });
  running.stack = stack;
  if (exitCode !== undefined) {
    await stack.stop();
    process.exit(exitCode);
  }
  const lines = [
    `# thinrelay local stack: S3 ${stack.s3Endpoint} (s3rver), SQS ${stack.sqsEndpoint} (local-aws-sqs),`,
    `# DynamoDB ${stack.dynamoEndpoint} (dynalite); bucket ${stack.bucket}, fleet table ${stack.fleetTable},`,
    `# group(s) ${groups.join(', ')} for ${stack.deployment.imagesPrefix}. Ctrl-C stops it and removes everything.`,
    ...Object.entries(stack.env).map(([k, v]) => `export ${k}=${v}`),
    `export THINRELAY_GROUP=${stack.group}`,
    // local-aws-sqs holds a long poll for its whole wait even when messages
    // arrive: agents poll in 1 s rounds here (in AWS: 20 s).
    'export THINRELAY_WAIT_SECONDS=1',
    `# upload: aws --endpoint-url $AWS_ENDPOINT_URL_S3 s3 cp app.tar s3://${stack.bucket}/images/app.tar`,
    'READY',
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

await main();
