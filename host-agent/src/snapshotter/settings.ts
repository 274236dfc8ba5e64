/**
 * The snapshots service's settings, read one way for `thinrelay snapshotter`
 * and for `thinrelay agent` (flags win over THINRELAY_SNAPSHOTTER_*
 * variables, which win over defaults). Plain parsing: no gRPC is loaded here,
 * so `doctor --agent` can check the agent's settings cheaply.
 */
import { parseSize } from '../config.js';
import { UsageError } from '../errors.js';

export const defaultSnapshotterSocket = '/run/thinrelay/snapshotter.sock';
const defaultVolumeBytes = 2 * 1024 ** 3;

export interface SocketSettings {
  path: string;
  /** File mode of the socket (default 0600: root only). */
  mode: number;
  /** Group that owns the socket (default 0). */
  gid: number;
}

export interface SnapshotterSettings {
  socket: SocketSettings;
  /** Size of the (sparse) fresh volume a Prepare without a parent makes. */
  freshVolumeBytes: number;
}

export interface SnapshotterFlags {
  socket?: string | undefined;
  socketMode?: string | undefined;
  socketGid?: string | undefined;
  volumeSize?: string | undefined;
}

function parseMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text))
    throw new UsageError('CONFIG', `socket mode ${text} is not an octal mode like 0600`);
  return parseInt(text, 8);
}

function parseGid(text: string): number {
  if (!/^\d+$/.test(text))
    throw new UsageError('CONFIG', `socket group ${text} is not a numeric gid`);
  return Number(text);
}

/** The socket path as given: undefined when neither the flag nor the variable names one. */
export function snapshotterSocketOf(
  flag: string | undefined,
  env: NodeJS.ProcessEnv,
): string | undefined {
  const path = flag ?? env.THINRELAY_SNAPSHOTTER_SOCKET;
  return path === undefined || path === '' ? undefined : path;
}

/**
 * The socket `thinrelay activate` asks first: the configured one (the agent's
 * THINRELAY_SNAPSHOTTER_SOCKET, from the same settings file), else the
 * standalone snapshotter's default; null when set to off.
 */
export function activationSocketOf(env: NodeJS.ProcessEnv): string | null {
  const path = snapshotterSocketOf(undefined, env) ?? defaultSnapshotterSocket;
  return path === 'off' ? null : path;
}

/** Settings for a service on `path` (mode, group and volume size from flags or variables). */
export function loadSnapshotterSettings(
  path: string,
  flags: SnapshotterFlags,
  env: NodeJS.ProcessEnv = process.env,
): SnapshotterSettings {
  if (!path.startsWith('/'))
    throw new UsageError('CONFIG', `snapshotter socket ${path} is not an absolute path`);
  const volumeSize = flags.volumeSize ?? env.THINRELAY_SNAPSHOTTER_VOLUME_SIZE;
  return {
    socket: {
      path,
      mode: parseMode(flags.socketMode ?? env.THINRELAY_SNAPSHOTTER_SOCKET_MODE ?? '0600'),
      gid: parseGid(flags.socketGid ?? env.THINRELAY_SNAPSHOTTER_SOCKET_GID ?? '0'),
    },
    freshVolumeBytes:
      volumeSize === undefined ? defaultVolumeBytes : parseSize(volumeSize, 'volume size'),
  };
}
