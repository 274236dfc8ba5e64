/**
 * thinrelay redrive | dlq peek: the dead-letter queue, for operators.
 *
 * The SQS SDK loads only when one of these runs (dynamic imports), so the
 * other commands never pay for it.
 */
import type { SQSClient } from '@aws-sdk/client-sqs';
import { ExitCode, QueueOperationError, UsageError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { PeekResult } from '../../queue/dlq-peek.js';
import type { Dlq, MoveTask } from '../../queue/redrive.js';
import type { Command, CommandContext } from '../command.js';
import { printJson, printTable, usageHint } from '../output.js';
import { unknownSubcommand } from '../help.js';

const POLL_INTERVAL_MS = 2000;

/**
 * The DLQ: --dlq-url, THINRELAY_DLQ_URL, else the one this host registered
 * (a group host's agent creates its own DLQ and records its URL in the state
 * dir: fleet/registration-record.ts), so the runbook needs no URL there.
 */
async function dlqUrlOf(ctx: CommandContext, usage: string): Promise<string> {
  const url = (ctx.values['dlq-url'] as string | undefined) ?? process.env.THINRELAY_DLQ_URL;
  if (url !== undefined && url !== '') return url;
  const { readRecord } = await import('../../fleet/member/registration-record.js');
  const record = readRecord(ctx.config().stateDir);
  if (record !== null && record.dlqUrl !== '') return record.dlqUrl;
  throw new UsageError(
    'USAGE',
    'no DLQ: pass --dlq-url (or THINRELAY_DLQ_URL); this state dir has no group registration to take it from',
    usageHint(usage),
  );
}

function intOption(
  ctx: CommandContext,
  flag: string,
  min: number,
  max: number,
): number | undefined {
  const raw = ctx.values[flag] as string | undefined;
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(
      'USAGE',
      `--${flag} must be an integer from ${min} to ${max}, got "${raw}"`,
    );
  }
  return n;
}

async function sqsClient(queueUrl: string | null, region?: string): Promise<SQSClient> {
  const { createSqsClient } = await import('../../queue/sqs-client.js');
  return createSqsClient(queueUrl, region === undefined ? {} : { region });
}

// ---------------------------------------------------------------- redrive

function taskView(task: MoveTask, dlq: Dlq | null, followingExisting: boolean): object {
  return {
    taskHandle: task.taskHandle,
    status: task.status,
    moved: task.moved,
    toMove: task.toMove,
    sourceArn: task.sourceArn,
    destinationArn: task.destinationArn,
    returnsTo: task.destinationArn === null ? (dlq?.sourceQueueUrls ?? null) : null,
    maxPerSecond: task.maxPerSecond,
    startedAt:
      task.startedTimestamp === null ? null : new Date(task.startedTimestamp).toISOString(),
    failureReason: task.failureReason,
    followingExisting,
  };
}

/** One redrawn line on a terminal; JSON progress lines (on change) otherwise. */
function moveProgress(
  ctx: CommandContext,
  logger: Logger,
): { update(task: MoveTask): void; end(): void } {
  const tty = process.stderr.isTTY && !ctx.json;
  const startedAt = Date.now();
  let last = '';
  let drawn = false;
  return {
    update(task) {
      if (tty) {
        const frac = task.toMove ? Math.min(1, task.moved / task.toMove) : 0;
        const bar = '#'.repeat(Math.round(frac * 24)).padEnd(24, '.');
        const secs = ((Date.now() - startedAt) / 1000).toFixed(0);
        process.stderr.write(
          `\r\x1b[2Kredrive [${bar}] ${task.moved} / ${task.toMove ?? '?'} messages  ${task.status}  ${secs}s`,
        );
        drawn = true;
        return;
      }
      const key = `${task.status}/${task.moved}/${task.toMove}`;
      if (key === last) return;
      last = key;
      logger.info('redrive progress', {
        status: task.status,
        moved: task.moved,
        toMove: task.toMove,
        taskHandle: task.taskHandle,
      });
    },
    end() {
      if (drawn) process.stderr.write('\n');
      drawn = false;
    },
  };
}

function describeDestination(task: MoveTask, dlq: Dlq): string {
  if (task.destinationArn !== null) return task.destinationArn;
  const names = dlq.sourceQueueUrls.map((u) => u.slice(u.lastIndexOf('/') + 1));
  const shown = names.slice(0, 5).join(', ') + (names.length > 5 ? `, … (${names.length})` : '');
  return `their original queues (${shown})`;
}

async function cancel(ctx: CommandContext, handle: string): Promise<number> {
  const { cancelMoveTask, sourceArnOfHandle } = await import('../../queue/redrive.js');
  // A handle from SQS names its queue's ARN: use its region unless one is configured.
  const arnRegion = sourceArnOfHandle(handle)?.split(':')[3];
  const configured = process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  const sqs = await sqsClient(
    null,
    configured === undefined || configured === '' ? arnRegion : undefined,
  );
  try {
    const moved = await cancelMoveTask(sqs, handle);
    if (ctx.json) printJson({ cancelled: true, moved });
    else
      process.stdout.write(
        `cancel requested; ${moved} message(s) had been moved. The rest stays in the DLQ.\n`,
      );
    return ExitCode.ok;
  } finally {
    sqs.destroy();
  }
}

async function redrive(ctx: CommandContext): Promise<number> {
  const handle = ctx.values.cancel as string | undefined;
  if (handle !== undefined) return cancel(ctx, handle);

  const { checkQueueUrl } = await import('../../queue/sqs-errors.js');
  const dlqUrl = checkQueueUrl(await dlqUrlOf(ctx, redriveCommand.usage), '--dlq-url');
  const toUrl = ctx.values['to-url'] as string | undefined;
  if (toUrl !== undefined) checkQueueUrl(toUrl, '--to-url');
  // SQS's own bounds for MaxNumberOfMessagesPerSecond.
  const maxPerSecond = intOption(ctx, 'max-per-second', 1, 500);

  const { describeDlq, startRedrive, followMoveTask } = await import('../../queue/redrive.js');
  const sqs = await sqsClient(dlqUrl);
  const aborter = new AbortController();
  let stoppedBy = 'SIGINT' as NodeJS.Signals;
  const onSignal = (sig: NodeJS.Signals): void => {
    stoppedBy = sig;
    aborter.abort(new Error(`received ${sig}`));
  };
  try {
    const dlq = await describeDlq(sqs, dlqUrl);
    const started = await startRedrive(sqs, dlq, { destinationUrl: toUrl, maxPerSecond });
    if (started.followingExisting) {
      const note =
        'a move task is already running on this DLQ (SQS allows one); following it instead of starting another';
      if (process.stderr.isTTY) {
        const t = started.task;
        const since =
          t.startedTimestamp === null
            ? ''
            : `, started ${new Date(t.startedTimestamp).toISOString()}`;
        process.stderr.write(`${note} (${t.moved} / ${t.toMove ?? '?'} moved${since})\n`);
      } else ctx.logger.warn(note, { task: taskView(started.task, dlq, true) });
    }
    if (ctx.values['no-wait'] === true) {
      if (ctx.json) printJson(taskView(started.task, dlq, started.followingExisting));
      else
        process.stdout.write(
          `${started.followingExisting ? 'already running' : 'started'}: ${started.task.taskHandle ?? '(finished)'}\n` +
            `follow: thinrelay redrive --dlq-url ${dlqUrl}   cancel: thinrelay redrive --cancel ${started.task.taskHandle ?? 'HANDLE'}\n`,
        );
      return ExitCode.ok;
    }

    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    const progress = moveProgress(ctx, ctx.logger);
    const t0 = Date.now();
    let task: MoveTask;
    try {
      task = await followMoveTask(sqs, started.task, {
        pollIntervalMs: POLL_INTERVAL_MS,
        signal: aborter.signal,
        onProgress: (t) => progress.update(t),
      });
    } catch (err) {
      progress.end();
      if (!aborter.signal.aborted) throw err;
      process.stderr.write(
        `thinrelay: redrive: stopped following; the move task keeps running.\n` +
          `  cancel it with: thinrelay redrive --cancel ${started.task.taskHandle ?? 'HANDLE'}\n` +
          `  follow it again: thinrelay redrive --dlq-url ${dlqUrl}\n`,
      );
      return stoppedBy === 'SIGTERM' ? ExitCode.terminated : ExitCode.interrupted;
    }
    progress.end();
    const secs = ((Date.now() - t0) / 1000).toFixed(1);
    if (ctx.json) printJson(taskView(task, dlq, started.followingExisting));
    else
      process.stdout.write(
        `${task.status}: moved ${task.moved} of ${task.toMove ?? '?'} message(s) from ${dlqUrl} to ${describeDestination(task, dlq)} in ${secs} s\n`,
      );
    if (task.status === 'FAILED') {
      throw new QueueOperationError(
        'MOVE_TASK_FAILED',
        `the move task FAILED after moving ${task.moved} of ${task.toMove ?? '?'} message(s): ${task.failureReason ?? 'no reason given'}`,
        'the rest is still in the DLQ: `thinrelay dlq peek` shows it; fix the cause (e.g. a deleted source queue: use --to-url) and redrive again',
      );
    }
    if (task.status === 'CANCELLED') {
      throw new QueueOperationError(
        'MOVE_TASK_CANCELLED',
        `the move task was cancelled after moving ${task.moved} message(s)`,
        'the rest is still in the DLQ; run redrive again to move it',
      );
    }
    return ExitCode.ok;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    sqs.destroy();
  }
}

export const redriveCommand: Command = {
  name: 'redrive',
  summary: 'move dead-lettered messages back to their queues (SQS message move task)',
  usage:
    'thinrelay redrive [--dlq-url URL] [--to-url URL] [--max-per-second N] [--no-wait] [--json] | redrive --cancel TASK_HANDLE',
  options: {
    'dlq-url': { type: 'string' },
    'to-url': { type: 'string' },
    'max-per-second': { type: 'string' },
    'no-wait': { type: 'boolean' },
    cancel: { type: 'string' },
  },
  optionDocs: {
    'dlq-url': {
      text: 'the dead-letter queue',
      arg: 'URL',
      env: 'THINRELAY_DLQ_URL',
      default: 'on a group host, the DLQ its agent registered',
    },
    'to-url': {
      text: 'move the messages to this queue instead',
      arg: 'URL',
      default: "each message's original queue",
    },
    'max-per-second': {
      text: 'move rate, 1-500 messages/s',
      arg: 'N',
      default: 'as fast as SQS goes',
    },
    'no-wait': { text: 'start the move task and return (prints how to follow or cancel it)' },
    cancel: { text: 'cancel a running move task (the handle redrive printed)', arg: 'TASK_HANDLE' },
  },
  examples: [
    'thinrelay redrive --dlq-url https://sqs.eu-west-1.amazonaws.com/123456789012/thinrelay-dlq',
    'thinrelay redrive --dlq-url "$THINRELAY_DLQ_URL" --max-per-second 10 --no-wait --json',
  ],
  run: redrive,
};

// ---------------------------------------------------------------- dlq peek

function printPeek(r: PeekResult): void {
  const out = process.stdout;
  const approx = r.approximateNumberOfMessages;
  out.write(
    `${r.queueUrl}: about ${approx ?? '?'} message(s) waiting` +
      (r.approximateNumberNotVisible
        ? `, ${r.approximateNumberNotVisible} in flight (not visible to a peek)`
        : '') +
      `; ${r.messages.length} seen\n`,
  );
  const events = r.messages.filter((m) => m.event !== null);
  if (events.length > 0) {
    printTable(
      [
        'MESSAGE-ID',
        'RECEIVES',
        'SENT',
        'FIRST-RECEIVED',
        'KIND',
        'BUCKET',
        'KEY',
        'SEQUENCER',
        'ETAG',
        'SIZE',
      ],
      events.map((m) => [
        m.messageId,
        m.receiveCount,
        m.sentAt,
        m.firstReceivedAt,
        m.event?.kind,
        m.event?.bucket,
        m.event?.key,
        m.event?.sequencer,
        m.event?.eTag,
        m.event?.size,
      ]),
    );
  }
  for (const m of r.messages.filter((x) => x.event === null)) {
    out.write(
      `not an image event: ${m.messageId} (receives ${m.receiveCount ?? '?'}, sent ${m.sentAt ?? '?'}): ${m.bodyError ?? ''}\n` +
        `  body: ${JSON.stringify(m.bodyPreview)}\n`,
    );
  }
  if (r.stoppedBy === 'max')
    out.write(`stopped at --max ${r.messages.length}; there may be more\n`);
  else if (approx !== null && r.messages.length < approx)
    out.write(
      `peek saw ${r.messages.length} of about ${approx}: SQS samples its servers on each receive; run it again to see others\n`,
    );
  out.write(
    'note: peeking counts as a receive (RECEIVES goes up); harmless on a DLQ. Nothing was deleted.\n',
  );
}

async function dlq(ctx: CommandContext): Promise<number> {
  const sub = ctx.positionals[0];
  if (sub !== 'peek') {
    throw unknownSubcommand(dlqCommand, sub, ['peek']);
  }
  const { checkQueueUrl } = await import('../../queue/sqs-errors.js');
  const url = checkQueueUrl(await dlqUrlOf(ctx, dlqCommand.usage), '--dlq-url');
  const max = intOption(ctx, 'max', 1, 10_000);
  const { peekQueue } = await import('../../queue/dlq-peek.js');
  const sqs = await sqsClient(url);
  try {
    const result = await peekQueue(sqs, url, { max });
    if (ctx.json) printJson(result);
    else printPeek(result);
    return ExitCode.ok;
  } finally {
    sqs.destroy();
  }
}

export const dlqCommand: Command = {
  name: 'dlq',
  summary: 'show what waits in the dead-letter queue, without consuming it',
  usage: 'thinrelay dlq peek [--dlq-url URL] [--max N] [--json]',
  options: { 'dlq-url': { type: 'string' }, max: { type: 'string' } },
  optionDocs: {
    'dlq-url': {
      text: 'the dead-letter queue',
      arg: 'URL',
      env: 'THINRELAY_DLQ_URL',
      default: 'on a group host, the DLQ its agent registered',
    },
    max: { text: 'stop after this many messages (1-10000)', arg: 'N', default: 'all it sees' },
  },
  examples: [
    'thinrelay dlq peek --dlq-url https://sqs.eu-west-1.amazonaws.com/123456789012/thinrelay-dlq --max 20',
  ],
  run: dlq,
};
