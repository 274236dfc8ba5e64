/** The AWS SDK's log calls as they reach our log: text that says something, failed commands at debug. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLogger, sdkLogger, type LogRecord } from '../../host-agent/src/log.js';

test('sdkLogger: a failed command is described, not "[object Object]", and logged at debug', () => {
  const records: LogRecord[] = [];
  const sdk = sdkLogger(createLogger((r) => records.push(r), 'debug'));
  const error = Object.assign(new Error('The specified queue does not exist.'), {
    name: 'QueueDoesNotExist',
  });
  sdk.error({ clientName: 'SQSClient', commandName: 'GetQueueUrlCommand', input: {}, error });
  sdk.warn('endpoint', { host: 'x' });
  sdk.error('a plain SDK error text');
  assert.deepEqual(
    records.map((r) => [r.level, r.detail]),
    [
      [
        'debug',
        'SQSClient GetQueueUrlCommand QueueDoesNotExist: The specified queue does not exist.',
      ],
      ['warn', 'endpoint {"host":"x"}'],
      ['error', 'a plain SDK error text'],
    ],
  );
});
