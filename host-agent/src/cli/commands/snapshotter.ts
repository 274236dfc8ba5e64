/**
 * thinrelay snapshotter: containerd's snapshots service on a unix socket, in
 * the foreground (for hosts without queues; containerd uses it as a proxy
 * snapshot plugin). gRPC is loaded here only, behind a dynamic import.
 */
import { EnvironmentError, UsageError } from '../../errors.js';
import {
  defaultSnapshotterSocket,
  loadSnapshotterSettings,
  snapshotterSocketOf,
} from '../../snapshotter/settings.js';
import type { Command, CommandContext } from '../command.js';
import { usageHint } from '../output.js';

const flag = (ctx: CommandContext, name: string): string | undefined => {
  const v = ctx.values[name];
  return typeof v === 'string' ? v : undefined;
};

async function run(ctx: CommandContext): Promise<number> {
  let settings: import('../../snapshotter/settings.js').SnapshotterSettings;
  try {
    settings = loadSnapshotterSettings(
      snapshotterSocketOf(flag(ctx, 'socket'), process.env) ?? defaultSnapshotterSocket,
      {
        socketMode: flag(ctx, 'socket-mode'),
        socketGid: flag(ctx, 'socket-gid'),
        volumeSize: flag(ctx, 'volume-size'),
      },
    );
  } catch (err) {
    if (err instanceof UsageError && err.hint === undefined)
      throw new UsageError('CONFIG', err.message, usageHint(usage));
    throw err;
  }
  if (process.getuid?.() !== 0)
    throw new EnvironmentError(
      'NOT_ROOT',
      'the snapshotter needs root (loop files, mkfs, the socket)',
      'run it as root',
    );
  const rt = ctx.runtime();
  const [{ acquireAgentLock }, { startSnapshotsService }] = await Promise.all([
    import('../../daemon/state-lock.js'),
    import('../../snapshotter/service-host.js'),
  ]);
  // The state dir's one daemon: an agent there (which can serve this API itself) refuses us.
  const lock = acquireAgentLock(rt.config.stateDir, rt.owner, 'snapshotter');
  try {
    const server = await startSnapshotsService(rt, settings, ctx.logger);
    if (!ctx.json)
      process.stderr.write(`thinrelay snapshotter serving on ${settings.socket.path}\n`);
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
    ctx.logger.info('snapshotter stopping', { signal });
    await server.close();
    return 0;
  } finally {
    lock.release();
  }
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
      default: defaultSnapshotterSocket,
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
