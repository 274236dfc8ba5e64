/**
 * The CLI's side of thinrelay.v1.Activation: one gRPC call over node:http2
 * on the daemon's unix socket, framed and encoded by hand (activation-wire.ts)
 * so `thinrelay activate` loads no gRPC library and no store. It falls back
 * (says why, the caller activates in-process) only while nothing can have
 * happened yet: no socket, a stale one, a peer that never speaks HTTP/2, a
 * service without Activation or one that declines the state dir. Once the
 * request is out, the service's answer stands: its error comes back with its
 * own code and exit code, and a service lost mid-call is a temporary error,
 * never a second activation.
 */
import http2 from 'node:http2';
import net from 'node:net';
import {
  RelayedError,
  TemporaryEnvironmentError,
  type ExitCode,
  type ReasonCode,
} from '../errors.js';
import {
  activatePath,
  declineTrailer,
  decodeActivateResponse,
  encodeActivateRequest,
  errorTrailer,
  type ActivateRequest,
  type ActivateResponse,
  type WireError,
} from './activation-wire.js';

export type ServiceOutcome =
  { kind: 'done'; response: ActivateResponse } | { kind: 'fallback'; reason: string };

/** How long a connected peer may take to open HTTP/2 (its SETTINGS) before we do the work ourselves. */
const handshakeMs = 5_000;
const unimplemented = 12;

function grpcMessage(raw: unknown): string {
  if (typeof raw !== 'string') return '';
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

function lost(socket: string, why: string): TemporaryEnvironmentError {
  return new TemporaryEnvironmentError(
    'SERVICE_FAILED',
    `the service on ${socket} did not finish the activation: ${why}`,
    'run it again; `thinrelay snapshots` shows whether a snapshot was made (the daemon reconciles any half-made one)',
  );
}

/** The failure the service sent, as the error the CLI would have raised itself. */
function relayed(wire: WireError): Error {
  if (wire.code === null) return new Error(wire.message);
  return new RelayedError(
    wire.code as ReasonCode,
    wire.message,
    wire.hint ?? undefined,
    wire.exitCode as ExitCode,
  );
}

function frame(message: Buffer): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

/** Ask the service on `socket` to activate; 'fallback' when no service there can have acted. */
export function activateThroughService(
  socket: string,
  request: ActivateRequest,
): Promise<ServiceOutcome> {
  return new Promise((resolve, reject) => {
    let sent = false;
    let settled = false;
    const session = http2.connect('http://localhost', {
      createConnection: () => net.connect(socket),
    });
    const finish = (then: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.destroy();
      then();
    };
    const fallback = (reason: string): void => finish(() => resolve({ kind: 'fallback', reason }));
    const fail = (err: Error): void => finish(() => reject(err));
    const timer = setTimeout(
      () => fallback(`it did not answer within ${handshakeMs} ms`),
      handshakeMs,
    );
    session.on('error', (err: NodeJS.ErrnoException) => {
      const why = err.code ?? err.message;
      if (sent) fail(lost(socket, why));
      else fallback(why);
    });
    // Closed without an error (a peer that hangs up on HTTP/2): no-op once settled.
    session.on('close', () => {
      if (sent) fail(lost(socket, 'it closed the connection'));
      else fallback('it closed the connection without speaking HTTP/2');
    });
    session.once('remoteSettings', () => {
      clearTimeout(timer);
      sent = true;
      const stream = session.request({
        ':method': 'POST',
        ':path': activatePath,
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      const chunks: Buffer[] = [];
      let meta: Record<string, unknown> = {};
      stream.on('response', (headers) => (meta = { ...headers }));
      stream.on('trailers', (trailers) => (meta = { ...meta, ...trailers }));
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      // REFUSED_STREAM: HTTP/2's word that the peer never processed it (a daemon shutting down).
      const refused = (): boolean => stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM;
      stream.on('error', (err: NodeJS.ErrnoException) =>
        refused()
          ? fallback('it refused the call (shutting down)')
          : fail(lost(socket, err.code ?? err.message)),
      );
      stream.on('close', () => {
        if (refused()) return fallback('it refused the call (shutting down)');
        const status = meta['grpc-status'];
        if (status === undefined) return fail(lost(socket, 'the call ended without a status'));
        const code = Number(status);
        const message = grpcMessage(meta['grpc-message']);
        if (code === 0) {
          const body = Buffer.concat(chunks);
          if (body.length < 5 || body[0] !== 0 || body.readUInt32BE(1) !== body.length - 5)
            return fail(lost(socket, 'an answer that is not one uncompressed message'));
          let response: ActivateResponse;
          try {
            response = decodeActivateResponse(body.subarray(5));
          } catch (err) {
            return fail(lost(socket, (err as Error).message));
          }
          return finish(() => resolve({ kind: 'done', response }));
        }
        // Nothing ran: an older service without Activation, or one on another state dir.
        if (code === unimplemented)
          return fallback(`the service there has no thinrelay.v1.Activation (${message})`);
        if (typeof meta[declineTrailer] === 'string') return fallback(`declined: ${message}`);
        const wire = meta[errorTrailer];
        if (typeof wire === 'string') {
          let parsed: WireError;
          try {
            parsed = JSON.parse(Buffer.from(wire, 'base64').toString('utf8')) as WireError;
          } catch {
            return fail(lost(socket, `status ${code}: ${message}`));
          }
          return fail(relayed(parsed));
        }
        return fail(lost(socket, `status ${code}: ${message}`));
      });
      stream.end(frame(encodeActivateRequest(request)));
    });
  });
}
