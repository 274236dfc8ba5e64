/**
 * A client of containerd's CRI image service (runtime.v1.ImageService, the
 * calls kubelet makes): PullImage and RemoveImage. containerd 1.6's CRI pull
 * unpacks through its client unpacker, which labels each layer's Prepare with
 * containerd.io/snapshot.ref (the remote-snapshotter protocol); `ctr images
 * pull` and `import` do not. The messages are written from the published
 * CRI API (k8s.io/cri-api runtime/v1/api.proto), only the fields used here.
 */
import * as grpc from '@grpc/grpc-js';
import { fromJSON } from '@grpc/proto-loader';

const imageSpec = { fields: { image: { type: 'string', id: 1 } } };
const descriptor = {
  nested: {
    runtime: {
      nested: {
        v1: {
          nested: {
            ImageSpec: imageSpec,
            PullImageRequest: { fields: { image: { type: 'ImageSpec', id: 1 } } },
            PullImageResponse: { fields: { image_ref: { type: 'string', id: 1 } } },
            RemoveImageRequest: { fields: { image: { type: 'ImageSpec', id: 1 } } },
            RemoveImageResponse: { fields: {} },
            ImageService: {
              methods: {
                PullImage: { requestType: 'PullImageRequest', responseType: 'PullImageResponse' },
                RemoveImage: {
                  requestType: 'RemoveImageRequest',
                  responseType: 'RemoveImageResponse',
                },
              },
            },
          },
        },
      },
    },
  },
};

export interface CriImages {
  /** Pulls `ref` with the CRI plugin's configured snapshotter; the image's id (config digest). */
  pull(ref: string): Promise<string>;
  remove(ref: string): Promise<void>;
  close(): void;
}

type Unary = (
  req: object,
  cb: (err: grpc.ServiceError | null, res: Record<string, unknown>) => void,
) => void;

export function criImages(socket: string): CriImages {
  const def = fromJSON(descriptor as Parameters<typeof fromJSON>[0], { keepCase: true });
  const Ctor = grpc.makeGenericClientConstructor(
    def['runtime.v1.ImageService'] as grpc.ServiceDefinition,
    'ImageService',
  );
  const client = new Ctor(`unix:${socket}`, grpc.credentials.createInsecure());
  const call = (method: string, req: object): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) =>
      (client as unknown as Record<string, Unary>)[method]!.call(client, req, (err, res) =>
        err === null ? resolve(res) : reject(err),
      ),
    );
  return {
    pull: async (ref) => (await call('PullImage', { image: { image: ref } })).image_ref as string,
    remove: async (ref) => {
      await call('RemoveImage', { image: { image: ref } });
    },
    close: () => client.close(),
  };
}
