/**
 * Reading the fleet table (schema/fleet.ts) for the operator's commands:
 * every request paginated, the byImage index for one image, and DynamoDB's
 * errors turned into FleetError with a reason code (table missing, refused,
 * unreachable). Its one write, `fleet forget` (fleet-forget.ts), goes through
 * the table's one writer, schema/fleet-table.ts.
 */
import {
  DynamoDBClient,
  GetItemCommand,
  QueryCommand,
  ScanCommand,
  type AttributeValue,
  type QueryCommandInput,
  type ScanCommandInput,
} from '@aws-sdk/client-dynamodb';
import {
  FLEET_GSI,
  fleetKeys,
  type DeploymentConfigItem,
  type HostImageItem,
  type HostItem,
  type RolloutItem,
} from '../../../../schema/fleet.js';
import { fromItem, toItem } from '../../../../schema/item-codec.js';
import { ExitCode, FleetError } from '../../errors.js';
import { NETWORK_CODES } from '../../queue/sqs-errors.js';

export type Item = Record<string, unknown>;

const ACCESS_NAMES = new Set([
  'AccessDeniedException',
  'UnrecognizedClientException',
  'InvalidSignatureException',
  'ExpiredTokenException',
  'CredentialsProviderError',
]);
const TEMPORARY_NAMES = new Set([
  'TimeoutError',
  'ProvisionedThroughputExceededException',
  'ThrottlingException',
  'RequestLimitExceeded',
  'InternalServerError',
  'ServiceUnavailable',
]);

/** `what` names the request, e.g. "Query byImage images/app.tar". */
export function mapDynamoError(err: unknown, table: string, what: string): FleetError {
  if (err instanceof FleetError) return err;
  const e = err as Error & { code?: unknown; $metadata?: { httpStatusCode?: number } };
  const name = e instanceof Error ? e.name : 'Error';
  const status = e.$metadata?.httpStatusCode;
  const code = typeof e.code === 'string' ? e.code : undefined;
  const detail = `${code ?? name}${status === undefined ? '' : ` (HTTP ${status})`}: ${e instanceof Error ? e.message : String(err)}`;
  const hint = `check THINRELAY_FLEET_TABLE, AWS_REGION and AWS_ENDPOINT_URL_DYNAMODB, and that this machine can reach DynamoDB`;
  if (name === 'ResourceNotFoundException') {
    return new FleetError(
      'FLEET_TABLE_NOT_FOUND',
      `${what}: the fleet table "${table}" does not exist`,
      'THINRELAY_FLEET_TABLE must name the table the stack created (see the stack outputs)',
      { cause: err },
    );
  }
  if (ACCESS_NAMES.has(name) || status === 403) {
    return new FleetError(
      'FLEET_ACCESS_DENIED',
      `${what}: DynamoDB refused the request: ${detail}`,
      'check the AWS credentials and that they may read the fleet table',
      { cause: err },
    );
  }
  if (
    TEMPORARY_NAMES.has(name) ||
    (code !== undefined && NETWORK_CODES.has(code)) ||
    (status !== undefined && status >= 500)
  ) {
    return new FleetError('FLEET_UNREACHABLE', `${what}: DynamoDB unreachable: ${detail}`, hint, {
      cause: err,
      exitCode: ExitCode.temporary,
    });
  }
  return new FleetError('FLEET_REQUEST_FAILED', `${what} failed: ${detail}`, hint, { cause: err });
}

/** The table name: --table, else THINRELAY_FLEET_TABLE. */
export function fleetTableName(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  const name = flag ?? env.THINRELAY_FLEET_TABLE;
  if (name === undefined || name === '') {
    throw new FleetError(
      'FLEET_TABLE_UNSET',
      'no fleet table: set THINRELAY_FLEET_TABLE (or pass --table)',
      'the deployed stack lists it in its outputs; `npm run stack` exports it',
      { exitCode: ExitCode.usage },
    );
  }
  return name;
}

export function createDynamoClient(env: NodeJS.ProcessEnv = process.env): DynamoDBClient {
  const region = env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  return new DynamoDBClient({
    ...(region !== undefined && region !== '' ? { region } : { region: 'us-east-1' }),
    requestHandler: { connectionTimeout: 5000, socketTimeout: 30_000 },
  });
}

export interface FleetSnapshot {
  config: DeploymentConfigItem;
  hosts: HostItem[];
  images: HostImageItem[];
  rollouts: RolloutItem[];
}

export class FleetReader {
  /** Requests sent (the bench reports them). */
  requests = 0;

  constructor(
    readonly client: DynamoDBClient,
    readonly table: string,
    /** Items per page (DynamoDB's own limit is 1 MB a page); tests make pages small. */
    private readonly pageSize?: number,
  ) {}

  private async send<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.requests++;
    try {
      return await fn();
    } catch (err) {
      throw mapDynamoError(err, this.table, what);
    }
  }

  /** The deployment item the stack wrote; FLEET_NOT_CONFIGURED when absent. */
  async config(): Promise<DeploymentConfigItem> {
    const out = await this.send('GetItem CONFIG', () =>
      this.client.send(
        new GetItemCommand({
          TableName: this.table,
          Key: toItem(fleetKeys.config),
          ConsistentRead: true,
        }),
      ),
    );
    if (out.Item === undefined) {
      throw new FleetError(
        'FLEET_NOT_CONFIGURED',
        `the fleet table "${this.table}" has no deployment item (pk CONFIG, sk DEPLOYMENT)`,
        'deploy the stack (it writes the item), or check THINRELAY_FLEET_TABLE',
      );
    }
    return fromItem(out.Item) as unknown as DeploymentConfigItem;
  }

  /** Every page of a Query or Scan, following LastEvaluatedKey. */
  private async paged(
    what: string,
    page: (start: Record<string, AttributeValue> | undefined) => Promise<{
      Items?: Record<string, AttributeValue>[];
      LastEvaluatedKey?: Record<string, AttributeValue>;
    }>,
  ): Promise<Item[]> {
    const items: Item[] = [];
    let start: Record<string, AttributeValue> | undefined;
    do {
      const out = await this.send(what, () => page(start));
      for (const i of out.Items ?? []) items.push(fromItem(i));
      start = out.LastEvaluatedKey;
    } while (start !== undefined);
    return items;
  }

  private query(what: string, input: Omit<QueryCommandInput, 'TableName'>): Promise<Item[]> {
    return this.paged(what, (start) =>
      this.client.send(
        new QueryCommand({
          TableName: this.table,
          ...input,
          Limit: this.pageSize,
          ExclusiveStartKey: start,
        }),
      ),
    );
  }

  private scan(what: string, input: Omit<ScanCommandInput, 'TableName'>): Promise<Item[]> {
    return this.paged(what, (start) =>
      this.client.send(
        new ScanCommand({
          TableName: this.table,
          ...input,
          Limit: this.pageSize,
          ExclusiveStartKey: start,
        }),
      ),
    );
  }

  /** Every host item: the index's HOSTS partition (no image items are read). */
  async hosts(): Promise<HostItem[]> {
    const items = await this.query(`Query ${FLEET_GSI} hosts`, {
      IndexName: FLEET_GSI,
      KeyConditionExpression: 'gpk = :gpk',
      ExpressionAttributeValues: { ':gpk': { S: fleetKeys.hostsGpk } },
    });
    return items as unknown as HostItem[];
  }

  async host(hostId: string): Promise<HostItem | null> {
    const out = await this.send(`GetItem host ${hostId}`, () =>
      this.client.send(
        new GetItemCommand({
          TableName: this.table,
          Key: toItem({ pk: fleetKeys.hostPk(hostId), sk: fleetKeys.hostSk }),
          ConsistentRead: true,
        }),
      ),
    );
    return out.Item === undefined ? null : (fromItem(out.Item) as unknown as HostItem);
  }

  /** Every item under one host's partition (its host item and image items): keys only. */
  async hostPartitionKeys(hostId: string): Promise<{ pk: string; sk: string }[]> {
    const items = await this.query(`Query host ${hostId}`, {
      KeyConditionExpression: 'pk = :pk',
      ExpressionAttributeValues: { ':pk': { S: fleetKeys.hostPk(hostId) } },
      ProjectionExpression: 'pk, sk',
      ConsistentRead: true,
    });
    return items as { pk: string; sk: string }[];
  }

  /** Every host's item for one image key (index byImage). */
  async imageItems(key: string): Promise<HostImageItem[]> {
    const items = await this.query(`Query ${FLEET_GSI} ${key}`, {
      IndexName: FLEET_GSI,
      KeyConditionExpression: 'gpk = :gpk',
      ExpressionAttributeValues: { ':gpk': { S: fleetKeys.imageGpk(key) } },
    });
    return items as unknown as HostImageItem[];
  }

  /** The newest image.put rollout of a key (sort keys order by S3 sequencer). */
  async latestPutRollout(key: string): Promise<RolloutItem | null> {
    let start: Record<string, AttributeValue> | undefined;
    do {
      const out = await this.send(`Query rollouts ${key}`, () =>
        this.client.send(
          new QueryCommand({
            TableName: this.table,
            KeyConditionExpression: 'pk = :pk',
            ExpressionAttributeValues: { ':pk': { S: fleetKeys.rolloutPk(key) } },
            ScanIndexForward: false,
            Limit: 10,
            ExclusiveStartKey: start,
          }),
        ),
      );
      const put = (out.Items ?? [])
        .map((i) => fromItem(i) as unknown as RolloutItem)
        .find((r) => r.kind === 'image.put');
      if (put !== undefined) return put;
      start = out.LastEvaluatedKey;
    } while (start !== undefined);
    return null;
  }

  /** The whole table in one paginated scan: what `fleet hosts` and `fleet status` (all images) show. */
  async snapshot(): Promise<FleetSnapshot> {
    const config = await this.config();
    const items = await this.scan('Scan fleet table', {});
    const hosts: HostItem[] = [];
    const images: HostImageItem[] = [];
    const rollouts: RolloutItem[] = [];
    for (const i of items) {
      const pk = String(i.pk);
      const sk = String(i.sk);
      if (pk.startsWith('HOST#') && sk === fleetKeys.hostSk) hosts.push(i as unknown as HostItem);
      else if (pk.startsWith('HOST#') && sk.startsWith('IMAGE#'))
        images.push(i as unknown as HostImageItem);
      else if (pk.startsWith('ROLLOUT#')) rollouts.push(i as unknown as RolloutItem);
    }
    return { config, hosts, images, rollouts };
  }
}
