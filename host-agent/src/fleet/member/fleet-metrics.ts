/** The fleet side's metrics (registration, heartbeats, catch-up sync, fleet-table writes). */
import { Counter, Gauge } from '../../daemon/metrics.js';

export class FleetMetrics {
  readonly writes = new Counter(
    'thinrelay_fleet_writes_total',
    'Fleet-table items written, by item (host, image).',
  );
  readonly writeFailures = new Counter(
    'thinrelay_fleet_write_failures_total',
    'Fleet-table writes that failed (each is retried with backoff; an image never fails for it), by item.',
  );
  readonly queueRecreated = new Counter(
    'thinrelay_queue_recreated_total',
    "Times this host's queue was found deleted and created again.",
  );
  readonly syncRounds = new Counter(
    'thinrelay_sync_rounds_total',
    'Catch-up sync rounds, by result (ok, failed).',
  );
  readonly syncRequests = new Counter(
    'thinrelay_sync_list_requests_total',
    'S3 ListObjectsV2 requests made by catch-up sync.',
  );
  readonly syncActions = new Counter(
    'thinrelay_sync_actions_total',
    'What catch-up sync did per key, by action (processed, retired, failed, superseded).',
  );
  readonly syncLastRequests = new Gauge(
    'thinrelay_sync_last_round_requests',
    'S3 requests of the last sync round (list pages and HEADs).',
  );
  readonly syncLastKeys = new Gauge(
    'thinrelay_sync_last_round_keys',
    "Keys the last sync round found for this host's group.",
  );
  readonly syncLastSeconds = new Gauge(
    'thinrelay_sync_last_round_seconds',
    'Duration of the last sync round, listing and work.',
  );
  readonly syncLastSuccess = new Gauge(
    'thinrelay_sync_last_success_timestamp_seconds',
    'When a sync round last completed (Unix time).',
  );
  readonly heartbeats = new Counter(
    'thinrelay_fleet_heartbeats_total',
    'Host heartbeats handed to the fleet table.',
  );

  render(): string {
    return [
      this.writes,
      this.writeFailures,
      this.queueRecreated,
      this.syncRounds,
      this.syncRequests,
      this.syncActions,
      this.syncLastRequests,
      this.syncLastKeys,
      this.syncLastSeconds,
      this.syncLastSuccess,
      this.heartbeats,
    ]
      .map((m) => m.render())
      .join('');
  }
}
