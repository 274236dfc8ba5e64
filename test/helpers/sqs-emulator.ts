/**
 * An in-process SQS emulator (local-aws-sqs 2.x, the JSON protocol the SDK
 * speaks) on 127.0.0.1 with a random port, plus queue helpers for tests.
 */
import type { AddressInfo } from 'node:net';
import {
  CreateQueueCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import { createSqsServer } from 'local-aws-sqs';

export const SQS_REGION = 'us-east-1';

export interface SqsEmulator {
  endpoint: string;
  client: SQSClient;
  /** A queue, optionally with its own DLQ and redrive policy. */
  createQueue(
    name: string,
    opts?: { dlq?: { name: string; maxReceiveCount: number }; visibilitySeconds?: number },
  ): Promise<{ url: string; dlqUrl: string | null }>;
  send(queueUrl: string, body: string): Promise<string>;
  /** ApproximateNumberOfMessages + NotVisible + Delayed. */
  depth(queueUrl: string): Promise<{ visible: number; inFlight: number }>;
  /** Receive what is visible right now, without waiting. */
  receiveNow(queueUrl: string, visibilitySeconds?: number): Promise<{ body: string }[]>;
  stop(): Promise<void>;
}

export async function startSqsEmulator(): Promise<SqsEmulator> {
  const server = await createSqsServer({
    port: 0,
    hostname: '127.0.0.1',
    region: SQS_REGION,
    emulateQueueCreationLifecycle: false,
  });
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = new SQSClient({
    region: SQS_REGION,
    endpoint,
    credentials: { accessKeyId: 'fake', secretAccessKey: 'fake' },
  });
  const arnOf = async (url: string): Promise<string> => {
    const out = await client.send(
      new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }),
    );
    return out.Attributes!.QueueArn!;
  };
  return {
    endpoint,
    client,
    async createQueue(name, opts = {}) {
      let dlqUrl: string | null = null;
      const attributes: Record<string, string> = {};
      if (opts.visibilitySeconds !== undefined)
        attributes.VisibilityTimeout = String(opts.visibilitySeconds);
      if (opts.dlq) {
        const dlq = await client.send(new CreateQueueCommand({ QueueName: opts.dlq.name }));
        dlqUrl = dlq.QueueUrl!;
        attributes.RedrivePolicy = JSON.stringify({
          deadLetterTargetArn: await arnOf(dlqUrl),
          maxReceiveCount: opts.dlq.maxReceiveCount,
        });
      }
      const q = await client.send(
        new CreateQueueCommand({ QueueName: name, Attributes: attributes }),
      );
      return { url: q.QueueUrl!, dlqUrl };
    },
    async send(queueUrl, body) {
      const out = await client.send(
        new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: body }),
      );
      return out.MessageId!;
    },
    async depth(queueUrl) {
      const out = await client.send(
        new GetQueueAttributesCommand({
          QueueUrl: queueUrl,
          AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
        }),
      );
      return {
        visible: Number(out.Attributes?.ApproximateNumberOfMessages ?? 0),
        inFlight: Number(out.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0),
      };
    },
    async receiveNow(queueUrl, visibilitySeconds = 0) {
      const out = await client.send(
        new ReceiveMessageCommand({
          QueueUrl: queueUrl,
          MaxNumberOfMessages: 10,
          WaitTimeSeconds: 0,
          VisibilityTimeout: visibilitySeconds,
        }),
      );
      return (out.Messages ?? []).map((m) => ({ body: m.Body ?? '' }));
    },
    async stop() {
      client.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Environment for a child process to reach the emulator the SDK's own way. */
export function sqsEnvFor(emulator: Pick<SqsEmulator, 'endpoint'>): Record<string, string> {
  return { AWS_ENDPOINT_URL_SQS: emulator.endpoint };
}
