/**
 * Typed errors with reason codes. Every failure the operator can see carries
 * a stable code (recorded in the DB and printed), a one-line message and a hint.
 * The class decides the process exit code, so the CLI never guesses.
 */

/** Exit codes of the `thinrelay` CLI. */
export const ExitCode = {
  ok: 0,
  imageFailed: 1,
  usage: 2,
  environment: 3,
  /** The thing named (image, snapshot, host, key) does not exist. */
  notFound: 4,
  /** `fleet wait`: the timeout passed before the rollout finished. */
  timeout: 124,
  /** A broken invariant: a bug in thinrelay, neither the image's fault nor the host's (EX_SOFTWARE). */
  internal: 70,
  /** A temporary failure (network, throttling, a lock held elsewhere): retrying later may succeed (EX_TEMPFAIL). */
  temporary: 75,
  /** Interrupted by SIGINT (128 + 2). */
  interrupted: 130,
  /** Interrupted by SIGTERM (128 + 15). */
  terminated: 143,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** Reason codes of ImageError (a list at run time: recorded codes are read back by classifyFailure's rule). */
export const imageFailureCodes = [
  'ARCHIVE_EMPTY',
  'ARCHIVE_NOT_TAR',
  'ARCHIVE_TRUNCATED',
  'ARCHIVE_MALFORMED',
  'ARCHIVE_UNSUPPORTED_ENTRY',
  'ARCHIVE_BAD_NAME',
  'ARCHIVE_PATH_ESCAPE',
  'ARCHIVE_LINK_ESCAPE',
  'ARCHIVE_UNSAFE_LINK',
  'ARCHIVE_CONFLICT',
  // Container images (docker save, OCI layout): see image/.
  'IMAGE_FORMAT_UNKNOWN',
  'IMAGE_MANIFEST_INVALID',
  'IMAGE_BLOB_MISSING',
  'IMAGE_BLOB_REPEATED',
  'IMAGE_PLATFORM_MISSING',
  'IMAGE_NO_LAYERS',
  'BLOB_DIGEST_MISMATCH',
  'BLOB_SIZE_MISMATCH',
  'LAYER_DIGEST_MISMATCH',
  'LAYER_NOT_TAR',
  'LAYER_UNSAFE_WHITEOUT',
  'LAYER_UNSAFE_LINK',
  'LIMIT_BLOB_SIZE',
  'LIMIT_UNPACKED_BYTES',
  'LIMIT_ENTRY_COUNT',
  'LIMIT_PATH_LENGTH',
  'LIMIT_PATH_DEPTH',
  // More layers than an image may have, or its layers' total beyond the chain limit.
  'LIMIT_LAYER_COUNT',
  'LIMIT_CHAIN_BYTES',
  // The container archive (decompressed) and its spooled layers exceed the spool limit.
  'LIMIT_SPOOL_BYTES',
  // A member whose xattrs no ext4 volume can hold, or more hard links than ext4 allows.
  'LIMIT_XATTR_SIZE',
  'LIMIT_LINK_COUNT',
  // A uid or gid no Linux filesystem can record.
  'ARCHIVE_BAD_OWNER',
  'VOLUME_FULL',
  // Signatures (host-agent/src/trust/, docs/trust.md): no sidecar by the deadline; none of the
  // trusted keys or identities verifies it; a sidecar that is not a signature at all.
  'SIGNATURE_MISSING',
  'SIGNATURE_INVALID',
  'SIGNATURE_SIDECAR_EMPTY',
  'SIGNATURE_SIDECAR_TOO_LARGE',
  'SIGNATURE_NOT_BASE64',
  'SIGNATURE_BUNDLE_MALFORMED',
  // A Sigstore bundle whose message digest is not the image's signed payload.
  'SIGNATURE_BUNDLE_DIGEST_MISMATCH',
  'OBJECT_NOT_FOUND',
  'OBJECT_CHANGED',
  // S3 or KMS refused the agent (a missing grant or a policy denial): never "not found".
  'ACCESS_DENIED',
  'CHECKSUM_MISMATCH',
  'DOWNLOAD_FAILED',
  'STORAGE_FAILED',
  'INTERRUPTED',
] as const;
export type ImageFailureCode = (typeof imageFailureCodes)[number];

export type UsageCode =
  | 'USAGE'
  | 'CONFIG'
  | 'IN_USE'
  /** The image or snapshot exists but is not in the state the command needs. */
  | 'NOT_READY'
  /** A snapshot of that key or name exists already (containerd's snapshotter API). */
  | 'ALREADY_EXISTS'
  /** The image no longer passes the signature policy (`thinrelay verify`): no new snapshots. */
  | 'UNTRUSTED'
  // Queue commands (redrive, dlq peek).
  | 'NOT_A_DLQ'
  | 'TASK_NOT_RUNNING';

/** The thing named does not exist (exit 4). NO_STATE: no state database at the state dir. */
export type NotFoundCode = 'NOT_FOUND' | 'NO_STATE' | 'QUEUE_NOT_FOUND' | 'TASK_NOT_FOUND';

export type EnvironmentCode =
  | 'NOT_ROOT'
  | 'LOOP_UNAVAILABLE'
  | 'DM_UNAVAILABLE'
  | 'TOOL_MISSING'
  | 'STATE_DIR'
  | 'DB_CORRUPT'
  // The state database cannot be written: read-only file or filesystem.
  | 'DB_READONLY'
  // Another process holds the state database's write lock past the busy timeout.
  | 'DB_BUSY'
  // Another `thinrelay agent` runs on this state dir.
  | 'AGENT_RUNNING'
  | 'POOL_UNAVAILABLE'
  // A system tool (dmsetup, thin_dump) answered something thinrelay cannot read.
  | 'TOOL_OUTPUT'
  // A system tool (mkfs.ext4, mount, losetup...) failed: this host's fault, never the image's.
  | 'TOOL_FAILED'
  | 'LOW_SPACE'
  // The state dir's filesystem (database, loop pool) is full.
  | 'STATE_FULL'
  // The operator's Sigstore trusted root file is missing or not a trusted root: the host's fault, not the image's.
  | 'TRUST_ROOT_UNAVAILABLE'
  // Queue commands: SQS unreachable, refusing us, or answering something unexpected.
  | 'QUEUE_UNREACHABLE'
  | 'QUEUE_ACCESS_DENIED'
  | 'QUEUE_REQUEST_FAILED'
  // The download's worker thread died (crashed, out of memory): this host's fault, never the image's.
  | 'DOWNLOAD_WORKER_FAILED'
  // The daemon's service took `thinrelay activate`'s request and then did not answer it.
  | 'SERVICE_FAILED';

/** A queue operation ran to its end without succeeding. */
export type QueueOperationCode = 'MOVE_TASK_FAILED' | 'MOVE_TASK_CANCELLED' | 'MOVE_TASK_LOST';

/** The fleet commands: the fleet table missing, refusing us, unreachable; a host or key unknown. */
export type FleetCode =
  | 'FLEET_TABLE_UNSET'
  | 'FLEET_TABLE_NOT_FOUND'
  | 'FLEET_NOT_CONFIGURED'
  | 'FLEET_ACCESS_DENIED'
  | 'FLEET_UNREACHABLE'
  | 'FLEET_REQUEST_FAILED'
  | 'HOST_NOT_FOUND'
  | 'HOST_LIVE'
  | 'KEY_NOT_FOUND'
  | 'KEY_NOT_ROUTED';

/** A broken invariant (InternalError): a bug, recorded and printed under this one code. */
export type InternalCode = 'INTERNAL';

/** Not a failure: the image waits for its signature sidecar (AwaitingSignature). */
export type WaitCode = 'AWAITING_SIGNATURE';

export type ReasonCode =
  | ImageFailureCode
  | UsageCode
  | NotFoundCode
  | EnvironmentCode
  | QueueOperationCode
  | FleetCode
  | InternalCode
  | WaitCode;

export abstract class ThinrelayError extends Error {
  abstract readonly exitCode: ExitCode;
  constructor(
    readonly code: ReasonCode,
    message: string,
    /** What the operator can do about it. */
    readonly hint?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The image itself is bad or could not be processed: recorded on the job, exit 1. */
export class ImageError extends ThinrelayError {
  readonly exitCode: ExitCode = ExitCode.imageFailed;
  constructor(
    code: ImageFailureCode,
    message: string,
    hint?: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, hint, options);
  }
}

/**
 * The image's policy verifies signatures and its sidecar has not arrived: it
 * waits (awaiting-signature) until `deadline`, holding nothing. Not a failure:
 * the daemon hands its message back to return at the deadline (or earlier, to
 * nothing, once the sidecar's event made it ready); the CLI exits 75.
 */
export class AwaitingSignature extends ThinrelayError {
  readonly exitCode = ExitCode.temporary;
  constructor(
    message: string,
    readonly deadline: Date,
  ) {
    super(
      'AWAITING_SIGNATURE',
      message,
      'upload the signature sidecar (<key>.sig or <key>.sigstore.json); see docs/trust.md',
    );
  }
}

/** The command line or configuration is wrong: exit 2. */
export class UsageError extends ThinrelayError {
  readonly exitCode = ExitCode.usage;
  constructor(code: UsageCode, message: string, hint?: string) {
    super(code, message, hint);
  }
}

/** The image, snapshot, queue or state named does not exist: exit 4. */
export class NotFoundError extends ThinrelayError {
  readonly exitCode = ExitCode.notFound;
  constructor(code: NotFoundCode, message: string, hint?: string) {
    super(code, message, hint);
  }
}

/** The host is not ready (not root, no loop devices, no mkfs, ...): exit 3. */
export class EnvironmentError extends ThinrelayError {
  readonly exitCode: ExitCode = ExitCode.environment;
  constructor(
    code: EnvironmentCode,
    message: string,
    hint?: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, hint, options);
  }
}

/**
 * The host stayed out of space (LOW_SPACE, STATE_FULL) through its retry
 * budget for this image: still the host's fault and its code, but recorded as
 * failed rather than retried again (the message goes on toward the DLQ).
 */
export class SpaceExhaustedError extends EnvironmentError {}

/** The host is busy (a lock held elsewhere): retrying later may succeed, exit 75. */
export class TemporaryEnvironmentError extends EnvironmentError {
  override readonly exitCode: ExitCode = ExitCode.temporary;
}

/** A message move task ended FAILED or CANCELLED (or vanished): exit 1, like a failed image. */
export class QueueOperationError extends ThinrelayError {
  readonly exitCode = ExitCode.imageFailed;
  constructor(code: QueueOperationCode, message: string, hint?: string) {
    super(code, message, hint);
  }
}

/** A fleet-table fault: exit 3 (missing, not configured, refused) or 75 (unreachable: retry later). */
export class FleetError extends ThinrelayError {
  readonly exitCode: ExitCode;
  constructor(
    code: FleetCode,
    message: string,
    hint?: string,
    options?: { cause?: unknown; exitCode?: ExitCode },
  ) {
    super(code, message, hint, options);
    this.exitCode = options?.exitCode ?? ExitCode.environment;
  }
}

/**
 * A transient failure (network, throttling) that a caller may retry; the
 * daemon retries these; the CLI exits 75 (EX_TEMPFAIL: run it again later).
 */
export class TransientError extends ImageError {
  readonly transient = true;
  override readonly exitCode: ExitCode = ExitCode.temporary;
}

/** The work was stopped by a signal: recorded as INTERRUPTED; exit 130 (SIGINT) or 143 (SIGTERM). */
export class InterruptedError extends ImageError {
  override readonly exitCode: ExitCode;
  constructor(signal: string, message: string, hint?: string, options?: { cause?: unknown }) {
    super('INTERRUPTED', message, hint, options);
    this.exitCode = signal === 'SIGTERM' ? ExitCode.terminated : ExitCode.interrupted;
  }
}

/**
 * A broken invariant — a bug in thinrelay, never the image's fault nor the
 * host's: exit 70, recorded as INTERNAL; the daemon retries it like any
 * unexpected error (the message reaches the DLQ by its receive count). Every
 * check that only a bug can fail throws this, not a bare Error.
 */
export class InternalError extends ThinrelayError {
  readonly exitCode = ExitCode.internal;
  constructor(message: string, options?: { cause?: unknown }) {
    super(
      'INTERNAL',
      message,
      'a bug in thinrelay: run it again with THINRELAY_DEBUG=1 for the stack, and report it',
      options,
    );
  }
}

/**
 * An error the daemon raised doing a CLI command's work (`thinrelay activate`
 * through its service), relayed with its code, message, hint and exit code as
 * they were, so the CLI reports it exactly as if it had raised it itself.
 */
export class RelayedError extends ThinrelayError {
  readonly exitCode: ExitCode;
  constructor(code: ReasonCode, message: string, hint: string | undefined, exitCode: ExitCode) {
    super(code, message, hint);
    this.exitCode = exitCode;
  }
}

export function isThinrelayError(err: unknown): err is ThinrelayError {
  return err instanceof ThinrelayError;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
