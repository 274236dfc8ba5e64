import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../host-agent/src/errors.js';
import {
  DEFAULT_S3_REGION,
  S3_CONNECTION_TIMEOUT_MS,
  S3_SOCKET_TIMEOUT_MS,
  createS3Client,
  endpointFromEnv,
  resolveForcePathStyle,
} from '../../host-agent/src/source/s3-client.js';

describe('endpointFromEnv', () => {
  it('prefers AWS_ENDPOINT_URL_S3 over AWS_ENDPOINT_URL', () => {
    assert.equal(
      endpointFromEnv({ AWS_ENDPOINT_URL_S3: 'http://s3.local', AWS_ENDPOINT_URL: 'http://all' }),
      'http://s3.local',
    );
    assert.equal(endpointFromEnv({ AWS_ENDPOINT_URL: 'http://all' }), 'http://all');
    assert.equal(endpointFromEnv({}), null);
    assert.equal(endpointFromEnv({ AWS_ENDPOINT_URL_S3: '  ' }), null);
  });

  it('honours AWS_IGNORE_CONFIGURED_ENDPOINT_URLS', () => {
    assert.equal(
      endpointFromEnv({
        AWS_ENDPOINT_URL_S3: 'http://x',
        AWS_IGNORE_CONFIGURED_ENDPOINT_URLS: 'true',
      }),
      null,
    );
    assert.equal(
      endpointFromEnv({
        AWS_ENDPOINT_URL_S3: 'http://x',
        AWS_IGNORE_CONFIGURED_ENDPOINT_URLS: 'false',
      }),
      'http://x',
    );
  });
});

describe('resolveForcePathStyle', () => {
  it('is virtual-hosted against real S3 (no endpoint override)', () => {
    assert.equal(resolveForcePathStyle({}, {}), false);
    assert.equal(resolveForcePathStyle({ AWS_REGION: 'eu-west-1' }, {}), false);
  });

  it('is path style when the endpoint is overridden by env or config', () => {
    assert.equal(resolveForcePathStyle({ AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:4568' }, {}), true);
    assert.equal(resolveForcePathStyle({ AWS_ENDPOINT_URL: 'http://minio:9000' }, {}), true);
    assert.equal(resolveForcePathStyle({}, { endpoint: 'http://127.0.0.1:1' }), true);
    assert.equal(
      resolveForcePathStyle(
        { AWS_ENDPOINT_URL_S3: 'http://x', AWS_IGNORE_CONFIGURED_ENDPOINT_URLS: 'true' },
        {},
      ),
      false,
    );
  });

  it('THINRELAY_S3_FORCE_PATH_STYLE=0|1 overrides the guess', () => {
    const emu = { AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:4568' };
    assert.equal(resolveForcePathStyle({ ...emu, THINRELAY_S3_FORCE_PATH_STYLE: '0' }, {}), false);
    assert.equal(resolveForcePathStyle({ THINRELAY_S3_FORCE_PATH_STYLE: '1' }, {}), true);
    assert.equal(resolveForcePathStyle({ ...emu, THINRELAY_S3_FORCE_PATH_STYLE: '' }, {}), true);
  });

  it('an explicit forcePathStyle override wins over everything', () => {
    assert.equal(
      resolveForcePathStyle({ THINRELAY_S3_FORCE_PATH_STYLE: '1' }, { forcePathStyle: false }),
      false,
    );
  });

  it('rejects a malformed THINRELAY_S3_FORCE_PATH_STYLE as UsageError CONFIG', () => {
    assert.throws(
      () => resolveForcePathStyle({ THINRELAY_S3_FORCE_PATH_STYLE: 'yes' }, {}),
      (err: unknown) => err instanceof UsageError && err.code === 'CONFIG' && !!err.hint,
    );
  });
});

describe('createS3Client', () => {
  const names = [
    'AWS_ENDPOINT_URL_S3',
    'AWS_ENDPOINT_URL',
    'AWS_IGNORE_CONFIGURED_ENDPOINT_URLS',
    'AWS_REGION',
    'AWS_DEFAULT_REGION',
    'AWS_PROFILE',
    'AWS_CONFIG_FILE',
    'AWS_SHARED_CREDENTIALS_FILE',
    'AWS_EC2_METADATA_DISABLED',
    'THINRELAY_S3_FORCE_PATH_STYLE',
  ];
  let saved: Record<string, string | undefined>;
  beforeEach(() => {
    saved = Object.fromEntries(names.map((n) => [n, process.env[n]]));
    for (const n of names) delete process.env[n];
    // No shared config files and no instance metadata: "nothing configured".
    process.env.AWS_CONFIG_FILE = '/nonexistent/thinrelay-test-config';
    process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/thinrelay-test-credentials';
    process.env.AWS_EC2_METADATA_DISABLED = 'true';
  });
  afterEach(() => {
    for (const n of names) {
      if (saved[n] === undefined) delete process.env[n];
      else process.env[n] = saved[n];
    }
  });

  it('uses path style when AWS_ENDPOINT_URL_S3 is set, and checksums WHEN_REQUIRED', async () => {
    process.env.AWS_ENDPOINT_URL_S3 = 'http://127.0.0.1:4568';
    const client = createS3Client();
    try {
      assert.equal(client.config.forcePathStyle, true);
      assert.equal(await client.config.requestChecksumCalculation(), 'WHEN_REQUIRED');
      assert.equal(await client.config.responseChecksumValidation(), 'WHEN_REQUIRED');
    } finally {
      client.destroy();
    }
  });

  it('is virtual-hosted without an endpoint override', () => {
    const client = createS3Client();
    try {
      assert.equal(client.config.forcePathStyle, false);
    } finally {
      client.destroy();
    }
  });

  it('THINRELAY_S3_FORCE_PATH_STYLE=0 turns path style off for an overridden endpoint', () => {
    process.env.AWS_ENDPOINT_URL_S3 = 'https://s3.example.net';
    process.env.THINRELAY_S3_FORCE_PATH_STYLE = '0';
    const client = createS3Client();
    try {
      assert.equal(client.config.forcePathStyle, false);
    } finally {
      client.destroy();
    }
  });

  it(`defaults the region to ${DEFAULT_S3_REGION} when none is configured anywhere`, async () => {
    const client = createS3Client();
    try {
      assert.equal(await client.config.region(), DEFAULT_S3_REGION);
    } finally {
      client.destroy();
    }
  });

  it('takes the region from AWS_REGION, or from the overrides', async () => {
    process.env.AWS_REGION = 'eu-central-1';
    const fromEnv = createS3Client();
    const explicit = createS3Client({ region: 'ap-south-1' });
    try {
      assert.equal(await fromEnv.config.region(), 'eu-central-1');
      assert.equal(await explicit.config.region(), 'ap-south-1');
    } finally {
      fromEnv.destroy();
      explicit.destroy();
    }
  });

  it('sets connection and socket-inactivity timeouts on the HTTP handler', async () => {
    const client = createS3Client();
    try {
      // NodeHttpHandler resolves its options into a (private) promise; peek at it.
      const handler = client.config.requestHandler as unknown as {
        configProvider: Promise<{ connectionTimeout?: number; socketTimeout?: number }>;
      };
      const configs = await handler.configProvider;
      assert.equal(configs.connectionTimeout, S3_CONNECTION_TIMEOUT_MS);
      assert.equal(configs.socketTimeout, S3_SOCKET_TIMEOUT_MS);
    } finally {
      client.destroy();
    }
  });
});
