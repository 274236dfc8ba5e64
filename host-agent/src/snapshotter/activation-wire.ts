/**
 * The wire format of thinrelay's own Activation service (thinrelay.v1.
 * Activation/Activate), served beside containerd's snapshots API on the same
 * socket so `thinrelay activate` can hand its work to the running daemon.
 * Two halves of one contract live here: the protobuf JSON descriptor the
 * server loads, and the few bytes the CLI encodes and decodes by hand (so the
 * CLI never loads gRPC); test/integration/activate-service.test.ts checks
 * they agree. Also how a failure travels: its reason code, message, hint and
 * exit code as JSON in the `thinrelay-error-bin` trailer, so the CLI prints
 * and exits exactly as it would have in-process.
 */

export const activationServiceName = 'thinrelay.v1.Activation';
export const activatePath = `/${activationServiceName}/Activate`;

/** Trailer with the failure as JSON (binary: the message may hold any text). */
export const errorTrailer = 'thinrelay-error-bin';
/** Trailer naming why the service did not act: the CLI then activates in its own process. */
export const declineTrailer = 'thinrelay-declined';

export interface ActivateRequest {
  /** The state dir the CLI is configured for (absolute): the service acts only on its own. */
  stateDir: string;
  /** The backend the CLI is configured for. */
  backend: string;
  /** IMAGE as given: an image id or an S3 key. */
  image: string;
}

export interface ActivateResponse {
  snapshotId: number;
  devicePath: string;
  /** The image's run config as JSON text ("null" for a flat rootfs tar). */
  configJson: string;
}

/** A failure as it travels: what errorJson and formatError need, and the exit code. */
export interface WireError {
  /** The reason code; null for an unexpected error (printed as such). */
  code: string | null;
  message: string;
  hint: string | null;
  exitCode: number;
}

export const activationDescriptor = {
  nested: {
    thinrelay: {
      nested: {
        v1: {
          nested: {
            Activation: {
              methods: {
                Activate: { requestType: 'ActivateRequest', responseType: 'ActivateResponse' },
              },
            },
            ActivateRequest: {
              fields: {
                state_dir: { type: 'string', id: 1 },
                backend: { type: 'string', id: 2 },
                image: { type: 'string', id: 3 },
              },
            },
            ActivateResponse: {
              fields: {
                snapshot_id: { type: 'int64', id: 1 },
                device_path: { type: 'string', id: 2 },
                config_json: { type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
};

// --- The CLI's hand-written codec for these two messages (protobuf wire types 0 and 2). ---

function varint(n: number): number[] {
  const out: number[] = [];
  let v = n;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

function stringField(id: number, value: string): Buffer {
  const bytes = Buffer.from(value, 'utf8');
  return Buffer.concat([Buffer.from([(id << 3) | 2, ...varint(bytes.length)]), bytes]);
}

export function encodeActivateRequest(r: ActivateRequest): Buffer {
  return Buffer.concat([
    stringField(1, r.stateDir),
    stringField(2, r.backend),
    stringField(3, r.image),
  ]);
}

/** Decodes ActivateResponse; unknown fields are skipped, as protobuf requires. */
export function decodeActivateResponse(buf: Buffer): ActivateResponse {
  const out: ActivateResponse = { snapshotId: 0, devicePath: '', configJson: 'null' };
  let pos = 0;
  const readVarint = (): number => {
    let result = 0;
    let scale = 1;
    for (;;) {
      if (pos >= buf.length) throw new Error('truncated ActivateResponse');
      const b = buf[pos++]!;
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 0x80;
    }
  };
  while (pos < buf.length) {
    const tag = readVarint();
    const id = Math.floor(tag / 8);
    const type = tag & 7;
    if (type === 0) {
      const v = readVarint();
      if (id === 1) out.snapshotId = v;
    } else if (type === 2) {
      const len = readVarint();
      if (pos + len > buf.length) throw new Error('truncated ActivateResponse');
      const text = buf.toString('utf8', pos, pos + len);
      pos += len;
      if (id === 2) out.devicePath = text;
      else if (id === 3) out.configJson = text;
    } else if (type === 1) pos += 8;
    else if (type === 5) pos += 4;
    else throw new Error(`ActivateResponse: unsupported wire type ${type}`);
  }
  return out;
}
