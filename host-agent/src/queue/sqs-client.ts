/**
 * The one place the agent's SQS client is built. Configuration is the SDK's
 * own (credential chain, AWS_REGION, AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL);
 * we add only what the SDK can't decide for us:
 *
 * - a socket timeout longer than the 20 s long poll, so a healthy long poll is
 *   never cut but a dead connection is noticed;
 * - the region of the queue URL (sqs.<region>.amazonaws.com) when none is
 *   configured, else us-east-1 (emulators don't care).
 */
import { SQSClient, type SQSClientConfig } from '@aws-sdk/client-sqs';

/** Longest ReceiveMessage wait SQS allows. */
export const LONG_POLL_SECONDS = 20;
export const SQS_CONNECTION_TIMEOUT_MS = 10_000;
/** Long poll + margin: only a connection that stays silent past the poll is dead. */
export const SQS_SOCKET_TIMEOUT_MS = (LONG_POLL_SECONDS + 15) * 1000;

/** "https://sqs.eu-west-1.amazonaws.com/123/q" → "eu-west-1"; null for other hosts. */
export function regionOfQueueUrl(url: string): string | null {
  const m = /^https?:\/\/sqs[.-]([a-z0-9-]+)\.amazonaws\.com(\.cn)?\//.exec(url);
  return m?.[1] ?? null;
}

export function createSqsClient(
  queueUrl: string | null,
  overrides: Partial<SQSClientConfig> = {},
  env: NodeJS.ProcessEnv = process.env,
): SQSClient {
  const configured = env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  const region =
    configured !== undefined && configured !== ''
      ? configured
      : ((queueUrl === null ? null : regionOfQueueUrl(queueUrl)) ?? 'us-east-1');
  return new SQSClient({
    region,
    requestHandler: {
      connectionTimeout: SQS_CONNECTION_TIMEOUT_MS,
      socketTimeout: SQS_SOCKET_TIMEOUT_MS,
    },
    ...overrides,
  });
}
