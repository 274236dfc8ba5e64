/**
 * The one mapping from thinrelay's typed errors to the gRPC status codes
 * containerd's snapshotter clients expect (errdefs: AlreadyExists lets the
 * unpacker skip a layer it has; NotFound, FailedPrecondition, InvalidArgument).
 * Codes are the gRPC spec's numbers, so this file needs no gRPC library.
 */
import { NotFoundError, ThinrelayError, errorMessage } from '../errors.js';

export const GrpcCode = {
  ok: 0,
  invalidArgument: 3,
  notFound: 5,
  alreadyExists: 6,
  resourceExhausted: 8,
  failedPrecondition: 9,
  unimplemented: 12,
  internal: 13,
  unavailable: 14,
} as const;
export type GrpcCode = (typeof GrpcCode)[keyof typeof GrpcCode];

export interface GrpcFailure {
  code: GrpcCode;
  details: string;
}

export function grpcFailureOf(err: unknown): GrpcFailure {
  const details = errorMessage(err);
  if (err instanceof NotFoundError) return { code: GrpcCode.notFound, details };
  if (err instanceof ThinrelayError) {
    switch (err.code) {
      case 'ALREADY_EXISTS':
        return { code: GrpcCode.alreadyExists, details };
      case 'USAGE':
        return { code: GrpcCode.invalidArgument, details };
      case 'NOT_READY':
      case 'IN_USE':
        return { code: GrpcCode.failedPrecondition, details };
      case 'LOW_SPACE':
      case 'STATE_FULL':
        return { code: GrpcCode.resourceExhausted, details };
      case 'DB_BUSY':
        return { code: GrpcCode.unavailable, details };
      default:
        return { code: GrpcCode.internal, details: `${err.code}: ${details}` };
    }
  }
  return { code: GrpcCode.internal, details };
}
