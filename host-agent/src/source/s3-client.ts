/**
 * The one place an S3 client is built. Everything is configured the SDK's own
 * way (credential chain, AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
 * shared config files); we only add what the SDK can't decide for us:
 *
 * - path-style addressing when the endpoint is overridden (emulators and most
 *   S3-compatible stores need it), overridable with THINRELAY_S3_FORCE_PATH_STYLE=0|1;
 * - checksum calculation/validation only WHEN_REQUIRED: we hash every download
 *   ourselves, ranged GETs can't be validated by the SDK, and some emulators
 *   store the aws-chunked framing of streamed uploads otherwise;
 * - a region fallback (us-east-1) when none is configured anywhere;
 * - connection and socket-inactivity timeouts, so a stalled connection is
 *   noticed (and a download resumes) instead of hanging forever.
 */
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { UsageError } from '../errors.js';

export const DEFAULT_S3_REGION = 'us-east-1';
/** Time allowed to establish a TCP (and TLS) connection. */
export const S3_CONNECTION_TIMEOUT_MS = 10_000;
/**
 * A socket idle for this long is destroyed. This is an inactivity timeout,
 * not a total request time: a multi-GB download that keeps flowing is never
 * cut, a stalled one is noticed (and resumed by downloadObject).
 */
export const S3_SOCKET_TIMEOUT_MS = 30_000;

export const FORCE_PATH_STYLE_ENV = 'THINRELAY_S3_FORCE_PATH_STYLE';

type Env = Record<string, string | undefined>;

/**
 * The endpoint the SDK will take from the environment, if any: the
 * service-specific AWS_ENDPOINT_URL_S3 wins over the global AWS_ENDPOINT_URL,
 * and both are ignored when AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true.
 */
export function endpointFromEnv(env: Env = process.env): string | null {
  if (env.AWS_IGNORE_CONFIGURED_ENDPOINT_URLS?.trim().toLowerCase() === 'true') return null;
  for (const name of ['AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL'] as const) {
    const value = env[name]?.trim();
    if (value) return value;
  }
  return null;
}

/**
 * Whether to use path-style addressing: an explicit `forcePathStyle` override
 * wins, then THINRELAY_S3_FORCE_PATH_STYLE=0|1, then "yes when the endpoint is
 * overridden" (in the overrides or in the environment).
 */
export function resolveForcePathStyle(
  env: Env = process.env,
  overrides: Partial<S3ClientConfig> = {},
): boolean {
  if (overrides.forcePathStyle !== undefined) return overrides.forcePathStyle;
  const flag = env[FORCE_PATH_STYLE_ENV]?.trim();
  if (flag !== undefined && flag !== '') {
    if (flag === '1') return true;
    if (flag === '0') return false;
    throw new UsageError(
      'CONFIG',
      `${FORCE_PATH_STYLE_ENV}=${JSON.stringify(flag)} is not valid`,
      `set ${FORCE_PATH_STYLE_ENV} to 1 (path-style addressing) or 0 (virtual-hosted), or unset it`,
    );
  }
  return overrides.endpoint !== undefined || endpointFromEnv(env) !== null;
}

/**
 * The SDK's own region chain (AWS_REGION, shared config/credentials files,
 * EC2 instance metadata), falling back to us-east-1 instead of failing with
 * "Region is missing". Resolved once per client, lazily (on the first request).
 */
function regionWithFallback(): () => Promise<string> {
  // A throwaway client exposes the SDK's default region provider without us
  // importing SDK internals. It never sends anything.
  const probe = new S3Client({});
  const chain = probe.config.region;
  probe.destroy();
  let resolved: Promise<string> | undefined;
  return () => {
    resolved ??= chain().then(
      (region) => region || DEFAULT_S3_REGION,
      () => DEFAULT_S3_REGION,
    );
    return resolved;
  };
}

/**
 * An S3 client configured the SDK's own way plus the thinrelay defaults above.
 * Anything in `overrides` wins (tests pass endpoint/credentials explicitly).
 * Throws UsageError CONFIG when THINRELAY_S3_FORCE_PATH_STYLE is malformed.
 */
export function createS3Client(overrides: Partial<S3ClientConfig> = {}): S3Client {
  const forcePathStyle = resolveForcePathStyle(process.env, overrides);
  const config: S3ClientConfig = {
    forcePathStyle,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // A bucket in another region than the configured one: follow S3's hint
    // instead of failing with PermanentRedirect / AuthorizationHeaderMalformed.
    followRegionRedirects: true,
    // The object form: the SDK builds its NodeHttpHandler from these options,
    // so we don't import @smithy/node-http-handler (not our direct dependency).
    requestHandler: {
      connectionTimeout: S3_CONNECTION_TIMEOUT_MS,
      socketTimeout: S3_SOCKET_TIMEOUT_MS,
    },
    ...overrides,
  };
  // AWS_REGION set (as on most hosts): the SDK reads it; no probe client to build.
  const envRegion = process.env.AWS_REGION?.trim();
  if (config.region === undefined) config.region = envRegion || regionWithFallback();
  const client = new S3Client(config);
  const recipe = plainRecipe(overrides);
  if (recipe !== null) recipes.set(client, recipe);
  return client;
}

/** What each client was built from, when a worker thread can build the same one. */
const recipes = new WeakMap<S3Client, Partial<S3ClientConfig>>();

/**
 * The overrides `client` was built from, when they are plain data (strings,
 * numbers, static credentials): another thread (the download worker) builds
 * the same client from them with createS3Client, in the same environment.
 * Null for a client built otherwise (a function, a custom handler).
 */
export function clientRecipe(client: S3Client): Partial<S3ClientConfig> | null {
  return recipes.get(client) ?? null;
}

function plainRecipe(overrides: Partial<S3ClientConfig>): Partial<S3ClientConfig> | null {
  const plain = (v: unknown): boolean =>
    v === null ||
    ['string', 'number', 'boolean', 'undefined'].includes(typeof v) ||
    (typeof v === 'object' &&
      Object.getPrototypeOf(v) === Object.prototype &&
      Object.values(v).every(plain));
  return plain(overrides) ? { ...overrides } : null;
}
