/**
 * The images bucket: private, encrypted, TLS-only and versioned, so every
 * write (an overwrite too) is its own object version with its own
 * notification; noncurrent versions expire after a while. Server access logs
 * go to a second bucket of the same kind.
 */
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import type { ThinrelayConfig } from './config.js';

export class ImagesBucket extends Construct {
  readonly bucket: s3.Bucket;
  readonly accessLogs: s3.Bucket;

  constructor(scope: Construct, id: string, config: ThinrelayConfig) {
    super(scope, id);
    const common = {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      // Images and their audit trail are data: deleting the stack keeps them.
      removalPolicy: RemovalPolicy.RETAIN,
    };

    this.accessLogs = new s3.Bucket(this, 'AccessLogs', {
      ...common,
      // Server access log delivery supports SSE-S3 only.
      encryption: s3.BucketEncryption.S3_MANAGED,
      lifecycleRules: [
        { id: 'expire-logs', expiration: Duration.days(config.bucket.accessLogDays) },
      ],
    });

    this.bucket = new s3.Bucket(this, 'Bucket', {
      ...common,
      ...(config.bucket.name !== null ? { bucketName: config.bucket.name } : {}),
      // SSE-S3: host roles then need no KMS grant to read images.
      encryption: s3.BucketEncryption.S3_MANAGED,
      versioned: true,
      serverAccessLogsBucket: this.accessLogs,
      serverAccessLogsPrefix: 'images-bucket/',
      lifecycleRules: [
        {
          id: 'expire-noncurrent-versions',
          noncurrentVersionExpiration: Duration.days(config.bucket.noncurrentVersionDays),
          expiredObjectDeleteMarker: true,
        },
        { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(7) },
      ],
    });
  }
}
