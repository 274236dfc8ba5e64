/**
 * Redrive: moving what waits in a dead-letter queue back to where it came
 * from, with SQS's own message move tasks (StartMessageMoveTask), and
 * following a task to its end (ListMessageMoveTasks).
 *
 * SQS allows one active task per source queue, so "start" that finds one
 * running follows that one instead of failing: two operators redriving the
 * same DLQ at 3 a.m. both see it finish. Following never cancels; cancelling
 * is its own explicit call (CancelMessageMoveTask with the task handle).
 *
 * A finished task has no handle in ListMessageMoveTasks (only RUNNING ones
 * do), so a task is recognised by its handle while it runs and by its start
 * timestamp afterwards.
 */
import {
  CancelMessageMoveTaskCommand,
  GetQueueAttributesCommand,
  ListDeadLetterSourceQueuesCommand,
  ListMessageMoveTasksCommand,
  StartMessageMoveTaskCommand,
  type ListMessageMoveTasksResultEntry,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { NotFoundError, QueueOperationError, UsageError } from '../errors.js';
import { mapSqsError, sqsErrorFacts } from './sqs-errors.js';

export type MoveTaskStatus = 'RUNNING' | 'COMPLETED' | 'CANCELLING' | 'CANCELLED' | 'FAILED';

export interface MoveTask {
  /** Only while RUNNING (SQS drops it from the listing afterwards). */
  taskHandle: string | null;
  status: MoveTaskStatus;
  sourceArn: string;
  /** null: messages go back to the queues they were dead-lettered from. */
  destinationArn: string | null;
  moved: number;
  /** How many the task set out to move (the DLQ's visible messages when it started). */
  toMove: number | null;
  maxPerSecond: number | null;
  /** Milliseconds since the epoch, as SQS reports it. */
  startedTimestamp: number | null;
  failureReason: string | null;
}

export interface Dlq {
  url: string;
  arn: string;
  /** Queues whose RedrivePolicy points here: where messages return to by default. */
  sourceQueueUrls: string[];
}

export function queueNameOfArn(arn: string): string {
  return arn.slice(arn.lastIndexOf(':') + 1);
}

export async function queueArn(sqs: SQSClient, url: string): Promise<string> {
  const out = await sqs
    .send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }))
    .catch((err: unknown) => {
      throw mapSqsError(err, `GetQueueAttributes ${url}`);
    });
  const arn = out.Attributes?.QueueArn;
  if (arn === undefined || arn === '') {
    throw mapSqsError(new Error('no QueueArn in the answer'), `GetQueueAttributes ${url}`);
  }
  return arn;
}

/**
 * The queue as a DLQ, or NOT_A_DLQ. SQS itself refuses a move task from a
 * queue no RedrivePolicy points at; asking first gives the operator a clear
 * answer and tells them where the messages will go.
 */
export async function describeDlq(sqs: SQSClient, url: string): Promise<Dlq> {
  const arn = await queueArn(sqs, url);
  const sourceQueueUrls: string[] = [];
  let NextToken: string | undefined;
  do {
    const out = await sqs
      .send(new ListDeadLetterSourceQueuesCommand({ QueueUrl: url, MaxResults: 1000, NextToken }))
      .catch((err: unknown) => {
        throw mapSqsError(err, `ListDeadLetterSourceQueues ${url}`);
      });
    sourceQueueUrls.push(...(out.queueUrls ?? []));
    NextToken = out.NextToken;
  } while (NextToken !== undefined && NextToken !== '');
  if (sourceQueueUrls.length === 0) {
    throw new UsageError(
      'NOT_A_DLQ',
      `${url} is not a dead-letter queue: no queue's RedrivePolicy points at it`,
      "pass the DLQ's URL (the deadLetterTargetArn of the host queues' RedrivePolicy)",
    );
  }
  return { url, arn, sourceQueueUrls };
}

function toMoveTask(e: ListMessageMoveTasksResultEntry): MoveTask {
  return {
    taskHandle: e.TaskHandle ?? null,
    status: (e.Status ?? 'RUNNING') as MoveTaskStatus,
    sourceArn: e.SourceArn ?? '',
    destinationArn: e.DestinationArn ?? null,
    moved: e.ApproximateNumberOfMessagesMoved ?? 0,
    toMove: e.ApproximateNumberOfMessagesToMove ?? null,
    maxPerSecond: e.MaxNumberOfMessagesPerSecond ?? null,
    startedTimestamp: e.StartedTimestamp ?? null,
    failureReason: e.FailureReason ?? null,
  };
}

/** The most recent move tasks of a source queue, newest first (SQS keeps the last 10). */
export async function listMoveTasks(
  sqs: SQSClient,
  sourceArn: string,
  maxResults = 10,
): Promise<MoveTask[]> {
  const out = await sqs
    .send(new ListMessageMoveTasksCommand({ SourceArn: sourceArn, MaxResults: maxResults }))
    .catch((err: unknown) => {
      throw mapSqsError(err, `ListMessageMoveTasks ${sourceArn}`);
    });
  return (out.Results ?? []).map(toMoveTask);
}

export interface RedriveOptions {
  /** Explicit destination queue URL; default: each message's original queue. */
  destinationUrl?: string | undefined;
  maxPerSecond?: number | undefined;
}

export interface StartedRedrive {
  task: MoveTask;
  /** True when a task was already running on this DLQ and we follow it instead. */
  followingExisting: boolean;
}

export async function startRedrive(
  sqs: SQSClient,
  dlq: Dlq,
  opts: RedriveOptions = {},
): Promise<StartedRedrive> {
  const destinationArn =
    opts.destinationUrl === undefined ? undefined : await queueArn(sqs, opts.destinationUrl);
  let handle: string;
  try {
    const out = await sqs.send(
      new StartMessageMoveTaskCommand({
        SourceArn: dlq.arn,
        DestinationArn: destinationArn,
        MaxNumberOfMessagesPerSecond: opts.maxPerSecond,
      }),
    );
    handle = out.TaskHandle ?? '';
  } catch (err) {
    // One active task per queue: the refusal's wording differs between SQS and
    // emulators, the listing does not.
    // A task being cancelled still blocks a new one; following it to its end is honest.
    const [newest] = await listMoveTasks(sqs, dlq.arn, 1);
    if (newest !== undefined && !isFinished(newest.status)) {
      return { task: newest, followingExisting: true };
    }
    const f = sqsErrorFacts(err);
    if (/dead.?letter/i.test(f.message)) {
      throw new UsageError(
        'NOT_A_DLQ',
        `${dlq.url} is not a dead-letter queue (SQS: ${f.message})`,
        "pass the DLQ's URL",
      );
    }
    throw mapSqsError(err, `StartMessageMoveTask ${dlq.url}`);
  }
  const tasks = await listMoveTasks(sqs, dlq.arn);
  // Gone from the handle index already (finished within the round trip): the newest is ours.
  const task = tasks.find((t) => t.taskHandle === handle) ?? tasks[0];
  if (task === undefined) {
    throw new QueueOperationError(
      'MOVE_TASK_LOST',
      `SQS accepted a move task for ${dlq.url} but does not list it`,
      'run `thinrelay dlq peek` to see what is still in the DLQ',
    );
  }
  return { task: { ...task, taskHandle: task.taskHandle ?? handle }, followingExisting: false };
}

export function isFinished(status: MoveTaskStatus): boolean {
  return status === 'COMPLETED' || status === 'FAILED' || status === 'CANCELLED';
}

export interface FollowOptions {
  pollIntervalMs?: number;
  /** Aborting stops following; the task keeps running. */
  signal?: AbortSignal;
  onProgress?: (task: MoveTask) => void;
}

/** Polls until the task is COMPLETED, FAILED or CANCELLED; returns its last state. */
export async function followMoveTask(
  sqs: SQSClient,
  started: MoveTask,
  opts: FollowOptions = {},
): Promise<MoveTask> {
  const interval = opts.pollIntervalMs ?? 2000;
  let task = started;
  const handle = started.taskHandle;
  opts.onProgress?.(task);
  while (!isFinished(task.status)) {
    await sleep(interval, opts.signal);
    const tasks = await listMoveTasks(sqs, started.sourceArn);
    const next =
      tasks.find((t) => handle !== null && t.taskHandle === handle) ??
      tasks.find(
        (t) => task.startedTimestamp !== null && t.startedTimestamp === task.startedTimestamp,
      );
    if (next === undefined) {
      throw new QueueOperationError(
        'MOVE_TASK_LOST',
        `the move task on ${queueNameOfArn(started.sourceArn)} is no longer listed (SQS keeps the last 10 tasks)`,
        'run `thinrelay dlq peek` to see what is still in the DLQ',
      );
    }
    task = { ...next, taskHandle: next.taskHandle ?? handle };
    opts.onProgress?.(task);
  }
  return task;
}

/** Cancels a running task; returns how many messages it had moved. */
export async function cancelMoveTask(sqs: SQSClient, taskHandle: string): Promise<number> {
  try {
    const out = await sqs.send(new CancelMessageMoveTaskCommand({ TaskHandle: taskHandle }));
    return out.ApproximateNumberOfMessagesMoved ?? 0;
  } catch (err) {
    const f = sqsErrorFacts(err);
    if (f.name === 'ResourceNotFoundException') {
      throw new NotFoundError('TASK_NOT_FOUND', `no move task with that handle: ${f.message}`);
    }
    if (/only active tasks/i.test(f.message)) {
      throw new UsageError('TASK_NOT_RUNNING', `the task is no longer running: ${f.message}`);
    }
    if (/TaskHandle/i.test(f.message)) {
      throw new UsageError(
        'USAGE',
        `not a task handle: ${f.message}`,
        'use the handle `thinrelay redrive` printed',
      );
    }
    throw mapSqsError(err, 'CancelMessageMoveTask');
  }
}

/**
 * The source queue's ARN inside a task handle, when the handle is the
 * base64 JSON SQS issues ({"taskId", "sourceArn"}); null otherwise. Only
 * used to pick the region for a cancel when none is configured.
 */
export function sourceArnOfHandle(taskHandle: string): string | null {
  try {
    const decoded: unknown = JSON.parse(Buffer.from(taskHandle, 'base64').toString('utf8'));
    const arn = (decoded as { sourceArn?: unknown }).sourceArn;
    return typeof arn === 'string' && arn.startsWith('arn:') ? arn : null;
  } catch {
    return null;
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
