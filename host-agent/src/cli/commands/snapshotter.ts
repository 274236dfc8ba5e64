/**
 * thinrelay snapshotter: containerd's snapshots service on a unix socket, in
 * the foreground (for hosts without queues; containerd uses it as a proxy
 * snapshot plugin). gRPC is loaded here only, behind a dynamic import.
 */
import { EnvironmentError, UsageError } from '../../errors.js';
import { parseSize } from '../../config.js';
import type { Command, CommandContext } from '../command.js';
import { usageHint } from '../output.js';

export const defaultSocket = '/run/thinrelay/snapshotter.sock';
const defaultVolumeBytes = 2 * 1024 ** 3;

function setting(ctx: CommandContext, flag: string, env: string): string | undefined {
  const v = ctx.values[flag];
  return typeof v === 'string' ? v : process.env[env];
}

function parseMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text))
    throw new UsageError(
      'USAGE',
      `socket mode ${text} is not an octal mode like 0600`,
      usageHint(usage),
    );
  return parseInt(text, 8);
}

function parseGid(text: string): number {
  if (!/^\d+$/.test(text))
    throw new UsageError('USAGE', `socket group ${text} is not a numeric gid`, usageHint(usage));
  return Number(text);
}

async function run(ctx: CommandContext): Promise<number> {
  const socket = {
    path: setting(ctx, 'socket', 'THINRELAY_SNAPSHOTTER_SOCKET') ?? defaultSocket,
    mode: parseMode(setting(ctx, 'socket-mode', 'THINRELAY_SNAPSHOTTER_SOCKET_MODE') ?? '0600'),
    gid: parseGid(setting(ctx, 'socket-gid', 'THINRELAY_SNAPSHOTTER_SOCKET_GID') ?? '0'),
  };
  const volumeSize = setting(ctx, 'volume-size', 'THINRELAY_SNAPSHOTTER_VOLUME_SIZE');
  const freshVolumeBytes =
    volumeSize === undefined ? defaultVolumeBytes : parseSize(volumeSize, 'volume size');
  if (process.getuid?.() !== 0)
    throw new EnvironmentError(
      'NOT_ROOT',
      'the snapshotter needs root (loop files, mkfs, the socket)',
      'run it as root',
    );
  const rt = ctx.runtime();
  const [{ checkServable }, { SnapshotService }, { serveSnapshots }, { reconcile }] =
    await Promise.all([
      import('../../snapshotter/mounts.js'),
      import('../../snapshotter/snapshot-service.js'),
      import('../../snapshotter/server.js'),
      import('../../pipeline/reconcile.js'),
    ]);
  checkServable(rt.objects.backend);
  await reconcile(rt);
  const service = new SnapshotService({ ...rt, freshVolumeBytes });
  await service.recover();
  const server = await serveSnapshots({ socket, service, logger: ctx.logger });
  if (!ctx.json) process.stderr.write(`thinrelay snapshotter serving on ${socket.path}\n`);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  ctx.logger.info('snapshotter stopping', { signal });
  await server.close();
  return 0;
}

const usage = 'thinrelay snapshotter [--socket PATH] [--socket-mode MODE] [--socket-gid GID]';

export const snapshotterCommand: Command = {
  name: 'snapshotter',
  summary: "serve containerd's snapshots API on a unix socket (a proxy snapshot plugin)",
  usage,
  options: {
    socket: { type: 'string' },
    'socket-mode': { type: 'string' },
    'socket-gid': { type: 'string' },
    'volume-size': { type: 'string' },
  },
  optionDocs: {
    socket: {
      text: 'the unix socket containerd connects to',
      arg: 'PATH',
      env: 'THINRELAY_SNAPSHOTTER_SOCKET',
      default: defaultSocket,
    },
    'socket-mode': {
      text: "the socket's file mode (octal)",
      arg: 'MODE',
      env: 'THINRELAY_SNAPSHOTTER_SOCKET_MODE',
      default: '0600',
    },
    'socket-gid': {
      text: 'the group that owns the socket',
      arg: 'GID',
      env: 'THINRELAY_SNAPSHOTTER_SOCKET_GID',
      default: '0',
    },
    'volume-size': {
      text: 'size of the (sparse) volume a Prepare without a parent makes',
      arg: 'SIZE',
      env: 'THINRELAY_SNAPSHOTTER_VOLUME_SIZE',
      default: '2GiB',
    },
  },
  examples: ['thinrelay snapshotter --socket /run/thinrelay/snapshotter.sock'],
  maxPositionals: 0,
  run,
};
