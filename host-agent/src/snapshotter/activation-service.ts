/**
 * thinrelay.v1.Activation/Activate on the daemon's socket: `thinrelay
 * activate IMAGE` done by the process that already holds the store and the
 * backend (no process start, no migrations, no backend set-up per call). It
 * runs the very activateImage the CLI runs in-process, and sends a failure
 * back with its code, message, hint and exit code (activation-wire.ts), so
 * the CLI's output is the same either way. A request for another state dir or backend
 * is declined before anything happens: the CLI then activates in-process.
 */
import * as grpc from '@grpc/grpc-js';
import { realpathSync } from 'node:fs';
import { failureOf } from '../cli/output.js';
import { errorMessage, isThinrelayError } from '../errors.js';
import type { Logger } from '../log.js';
import { activateImage, containerConfigOf } from '../ops/image-ops.js';
import type { PipelineDeps } from '../pipeline/context.js';
import { grpcFailureOf, GrpcCode } from './grpc-status.js';
import { declineTrailer, errorTrailer, type WireError } from './activation-wire.js';

/** The same path however it is spelled (a symlinked /var, a trailing slash). */
function canonical(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** A failure as the CLI's main would have reported it in-process (cli/output.ts failureOf). */
function wireErrorOf(thrown: unknown, stateDir: string): { err: unknown; wire: WireError } {
  const { err, exitCode } = failureOf(thrown, stateDir);
  const wire: WireError = isThinrelayError(err)
    ? { code: err.code, message: err.message, hint: err.hint ?? null, exitCode }
    : { code: null, message: errorMessage(err), hint: null, exitCode };
  return { err, wire };
}

export function activationHandlers(
  deps: PipelineDeps,
  logger: Logger,
): grpc.UntypedServiceImplementation {
  const ownStateDir = canonical(deps.config.stateDir);
  /** The activation and its answer; a failure as its gRPC status with the error trailer. */
  async function serve(
    image: string,
  ): Promise<{ response: Record<string, unknown> } | { status: Partial<grpc.StatusObject> }> {
    const started = process.hrtime.bigint();
    try {
      const { snapshot, devicePath } = await activateImage(deps, image);
      const row = deps.store.images.get(snapshot.image_id!)!;
      const container = containerConfigOf(deps, row) as { config?: unknown } | null;
      logger.info('activation served', {
        image,
        snapshotId: snapshot.id,
        devicePath,
        ms: Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100,
      });
      return {
        response: {
          snapshot_id: snapshot.id,
          device_path: devicePath,
          config_json: JSON.stringify(container?.config ?? null),
        },
      };
    } catch (thrown) {
      const { err, wire } = wireErrorOf(thrown, deps.config.stateDir);
      logger.info('activation failed', { image, code: wire.code, message: wire.message });
      const { code, details } = grpcFailureOf(err);
      const trailer = new grpc.Metadata();
      trailer.set(errorTrailer, Buffer.from(JSON.stringify(wire), 'utf8'));
      return { status: { code, details, metadata: trailer } };
    }
  }

  const Activate: grpc.handleUnaryCall<Record<string, unknown>, unknown> = (call, callback) => {
    const req = call.request;
    const text = (f: string): string => (typeof req[f] === 'string' ? req[f] : '');
    const image = text('image');
    const wantedDir = text('state_dir');
    const wantedBackend = text('backend');
    if (canonical(wantedDir) !== ownStateDir || wantedBackend !== deps.config.backend) {
      const why = `this service runs on ${ownStateDir} (${deps.config.backend}), not ${wantedDir} (${wantedBackend})`;
      logger.info('activation declined', { image, reason: why });
      const trailer = new grpc.Metadata();
      trailer.set(declineTrailer, 'state-dir');
      callback({ code: GrpcCode.failedPrecondition, details: why, metadata: trailer });
      return;
    }
    void serve(image).then((answer) =>
      'status' in answer ? callback(answer.status) : callback(null, answer.response),
    );
  };
  return { Activate };
}
