/**
 * The wire format of containerd's snapshots service (containerd.services.
 * snapshots.v1, api/services/snapshots/v1/snapshots.proto and api/types/
 * mount.proto of containerd's published API), written here as a protobuf
 * JSON descriptor: field numbers and types are what containerd sends and
 * expects. Timestamp, Empty and FieldMask are the well-known types' layouts.
 */
type Fields = Record<string, { type: string; id: number; rule?: 'repeated'; keyType?: string }>;

const str = (id: number): { type: string; id: number } => ({ type: 'string', id });
const labels = (id: number): Fields[string] => ({ keyType: 'string', type: 'string', id });
const mounts: Fields = { mounts: { type: 'containerd.types.Mount', id: 1, rule: 'repeated' } };
const keyRequest: Fields = { snapshotter: str(1), key: str(2) };
const createRequest: Fields = {
  snapshotter: str(1),
  key: str(2),
  parent: str(3),
  labels: labels(4),
};

const rpc = (
  request: string,
  response: string,
  responseStream = false,
): { requestType: string; responseType: string; responseStream?: boolean } => ({
  requestType: request,
  responseType: response,
  ...(responseStream ? { responseStream: true } : {}),
});

export const serviceName = 'containerd.services.snapshots.v1.Snapshots';

export const snapshotsDescriptor = {
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Empty: { fields: {} },
            Timestamp: {
              fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } },
            },
            FieldMask: { fields: { paths: { type: 'string', id: 1, rule: 'repeated' } } },
          },
        },
      },
    },
    containerd: {
      nested: {
        types: {
          nested: {
            Mount: {
              fields: {
                type: str(1),
                source: str(2),
                target: str(3),
                options: { type: 'string', id: 4, rule: 'repeated' },
              },
            },
          },
        },
        services: {
          nested: {
            snapshots: {
              nested: {
                v1: {
                  nested: {
                    Snapshots: {
                      methods: {
                        Prepare: rpc('PrepareSnapshotRequest', 'PrepareSnapshotResponse'),
                        View: rpc('ViewSnapshotRequest', 'ViewSnapshotResponse'),
                        Mounts: rpc('MountsRequest', 'MountsResponse'),
                        Commit: rpc('CommitSnapshotRequest', 'google.protobuf.Empty'),
                        Remove: rpc('RemoveSnapshotRequest', 'google.protobuf.Empty'),
                        Stat: rpc('StatSnapshotRequest', 'StatSnapshotResponse'),
                        Update: rpc('UpdateSnapshotRequest', 'UpdateSnapshotResponse'),
                        List: rpc('ListSnapshotsRequest', 'ListSnapshotsResponse', true),
                        Usage: rpc('UsageRequest', 'UsageResponse'),
                        Cleanup: rpc('CleanupRequest', 'google.protobuf.Empty'),
                      },
                    },
                    PrepareSnapshotRequest: { fields: createRequest },
                    PrepareSnapshotResponse: { fields: mounts },
                    ViewSnapshotRequest: { fields: createRequest },
                    ViewSnapshotResponse: { fields: mounts },
                    MountsRequest: { fields: keyRequest },
                    MountsResponse: { fields: mounts },
                    RemoveSnapshotRequest: { fields: keyRequest },
                    CommitSnapshotRequest: {
                      fields: { snapshotter: str(1), name: str(2), key: str(3), labels: labels(4) },
                    },
                    StatSnapshotRequest: { fields: keyRequest },
                    Kind: { values: { UNKNOWN: 0, VIEW: 1, ACTIVE: 2, COMMITTED: 3 } },
                    Info: {
                      fields: {
                        name: str(1),
                        parent: str(2),
                        kind: { type: 'Kind', id: 3 },
                        created_at: { type: 'google.protobuf.Timestamp', id: 4 },
                        updated_at: { type: 'google.protobuf.Timestamp', id: 5 },
                        labels: labels(6),
                      },
                    },
                    StatSnapshotResponse: { fields: { info: { type: 'Info', id: 1 } } },
                    UpdateSnapshotRequest: {
                      fields: {
                        snapshotter: str(1),
                        info: { type: 'Info', id: 2 },
                        update_mask: { type: 'google.protobuf.FieldMask', id: 3 },
                      },
                    },
                    UpdateSnapshotResponse: { fields: { info: { type: 'Info', id: 1 } } },
                    ListSnapshotsRequest: {
                      fields: {
                        snapshotter: str(1),
                        filters: { type: 'string', id: 2, rule: 'repeated' },
                      },
                    },
                    ListSnapshotsResponse: {
                      fields: { info: { type: 'Info', id: 1, rule: 'repeated' } },
                    },
                    UsageRequest: { fields: keyRequest },
                    UsageResponse: {
                      fields: { size: { type: 'int64', id: 1 }, inodes: { type: 'int64', id: 2 } },
                    },
                    CleanupRequest: { fields: { snapshotter: str(1) } },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

/** How messages look in JavaScript (proto-loader's options; the server and test clients share them). */
export const loaderOptions = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: false,
};
