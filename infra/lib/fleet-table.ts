/**
 * The fleet table (schema/fleet.ts: keys pk/sk, GSI byImage on gpk/gsk):
 * on demand, point-in-time recovery, and the CONFIG/DEPLOYMENT item written
 * by the stack on every create and update (a PutItem custom resource), so
 * routes and queue settings reach agents from the deployment itself.
 */
import { RemovalPolicy } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as cr from 'aws-cdk-lib/custom-resources';
import { Construct } from 'constructs';
import { FLEET_GSI, fleetKeys } from '../../schema/fleet.js';
import { toItem, type Plain } from '../../schema/item-codec.js';
import { names, type ThinrelayConfig } from './config.js';
import { deploymentConfigItem } from './deployment-item.js';

export class FleetTable extends Construct {
  readonly table: dynamodb.Table;
  readonly configWriter: cr.AwsCustomResource;

  constructor(scope: Construct, id: string, config: ThinrelayConfig, bucketName: string) {
    super(scope, id);
    this.table = new dynamodb.Table(this, 'Table', {
      tableName: names.fleetTable(config),
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      // Derived state: agents re-register and re-report, the bucket is the truth.
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.table.addGlobalSecondaryIndex({
      indexName: FLEET_GSI,
      partitionKey: { name: 'gpk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'gsk', type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.ALL,
    });

    const item = deploymentConfigItem(config, bucketName) as unknown as { [k: string]: Plain };
    const putItem: cr.AwsSdkCall = {
      service: 'DynamoDB',
      action: 'PutItem',
      parameters: { TableName: this.table.tableName, Item: toItem(item) },
      // One item per deployment; an update rewrites it in place.
      physicalResourceId: cr.PhysicalResourceId.of(`${names.fleetTable(config)}/CONFIG/DEPLOYMENT`),
    };
    this.configWriter = new cr.AwsCustomResource(this, 'DeploymentConfig', {
      onCreate: putItem,
      onUpdate: putItem,
      policy: cr.AwsCustomResourcePolicy.fromStatements([
        new iam.PolicyStatement({
          actions: ['dynamodb:PutItem'],
          resources: [this.table.tableArn],
          conditions: {
            'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': [fleetKeys.config.pk] },
          },
        }),
      ]),
      installLatestAwsSdk: false,
    });
  }
}
