/** thinrelay process-image --s3-key KEY: download, verify, unpack, snapshot, activate. */
import type { S3Client } from '@aws-sdk/client-s3';
import { EnvironmentError, InterruptedError, UsageError, errorMessage } from '../../errors.js';
import { existsSync } from 'node:fs';
import type { Command, CommandContext } from '../command.js';
import { printJson, usageHint } from '../output.js';
import { logProgress, ttyProgress } from '../progress-bar.js';

function checkHostReady(backend: string): void {
  if (process.getuid?.() !== 0) {
    throw new EnvironmentError(
      'NOT_ROOT',
      'process-image needs root (loop devices, mkfs, mounts)',
      'run it as root',
    );
  }
  if (backend === 'loop' && !existsSync('/dev/loop-control')) {
    throw new EnvironmentError(
      'LOOP_UNAVAILABLE',
      'this host has no loop devices (/dev/loop-control)',
      'modprobe loop',
    );
  }
}

async function run(ctx: CommandContext): Promise<number> {
  const key = ctx.values['s3-key'] as string | undefined;
  if (key === undefined || key === '')
    throw new UsageError('USAGE', 'missing --s3-key', usageHint(processImageCommand.usage));
  const config = ctx.config();
  if (config.bucket === null)
    throw new UsageError(
      'CONFIG',
      'no bucket given',
      'pass --bucket, or set THINRELAY_BUCKET (in the environment or /etc/thinrelay/agent.env)',
    );
  checkHostReady(config.backend);

  const { processImage } = await import('../../pipeline/process-image.js');
  const aborter = new AbortController();
  let stoppedBy = 'SIGINT' as NodeJS.Signals;
  const onSignal = (sig: NodeJS.Signals): void => {
    stoppedBy = sig;
    aborter.abort(new Error(`received ${sig}`));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // The SDK loads on first use: an image already done at a given --etag never needs it.
  let s3: Promise<S3Client> | undefined;
  const rt = ctx.runtime({
    s3: () => (s3 ??= import('../../source/s3-client.js').then((m) => m.createS3Client())),
    progress:
      process.stderr.isTTY && !ctx.json ? ttyProgress(process.stderr) : logProgress(ctx.logger),
    signal: aborter.signal,
    keepOnFailure: ctx.values['keep-on-failure'] === true,
  });
  try {
    const result = await processImage(rt, {
      bucket: config.bucket,
      key,
      versionId: (ctx.values['version-id'] as string | undefined) ?? null,
      eTag: (ctx.values.etag as string | undefined) ?? null,
    }).catch((err: unknown) => {
      if (!aborter.signal.aborted) throw err;
      // Ctrl-C / SIGTERM: the job is recorded as failed (INTERRUPTED) and its storage released.
      throw new InterruptedError(
        stoppedBy,
        `stopped: ${errorMessage(aborter.signal.reason)}; what it had created was released`,
        'run the same command again to retry',
        { cause: err },
      );
    });
    if (ctx.json) {
      printJson({
        outcome: result.outcome,
        imageId: result.image.id,
        bucket: result.image.bucket,
        key: result.image.key,
        etag: result.image.etag,
        sha256: result.image.sha256,
        jobId: result.jobId,
        snapshotId: result.snapshotObjectId,
        devicePath: result.devicePath,
      });
    } else {
      process.stdout.write(result.devicePath + '\n');
    }
    return 0;
  } finally {
    if (s3 !== undefined) (await s3).destroy();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export const processImageCommand: Command = {
  name: 'process-image',
  summary: 'download, verify, unpack, snapshot and activate one image (idempotent)',
  usage:
    'thinrelay process-image --s3-key KEY [--bucket B] [--version-id V] [--etag E] [--keep-on-failure] [--json]',
  options: {
    's3-key': { type: 'string' },
    bucket: { type: 'string' },
    'version-id': { type: 'string' },
    etag: { type: 'string' },
    'keep-on-failure': { type: 'boolean' },
  },
  optionDocs: {
    's3-key': {
      text: 'object key of the image tarball (.tar, .tar.gz, .tar.zst); required',
      arg: 'KEY',
    },
    bucket: { text: 'bucket holding the image', arg: 'BUCKET', env: 'THINRELAY_BUCKET' },
    'version-id': {
      text: 'a specific object version (versioned buckets)',
      arg: 'ID',
      default: 'the current version',
    },
    etag: {
      text: 'the ETag expected; already done at this ETag → no S3 request at all',
      arg: 'ETAG',
      default: 'whatever S3 has now',
    },
    'keep-on-failure': {
      text: "keep a failed image's volume for inspection instead of releasing it",
    },
  },
  examples: [
    'thinrelay process-image --bucket my-images --s3-key images/base.tar.gz',
    'thinrelay process-image --s3-key images/base.tar.gz --json   # bucket from THINRELAY_BUCKET',
  ],
  run,
};
