// A real tus 1.0 server for the tests: @tus/server 2.x with @tus/file-store (or @tus/s3-store),
// on 127.0.0.1. Started by tests/support/tus.py, which reads the first stdout line
// ("listening PORT") and stops it by PID.
//
//   node tus_server.mjs --modules DIR --dir DIR [--port 0] [--token T] [--max-size N]
//                       [--expire-ms N] [--s3-endpoint URL --s3-bucket B --s3-key K --s3-secret S]
//
// --modules: the node_modules folder .ci/install-tus-server filled.
// --token: every request but OPTIONS needs "Authorization: Bearer T" (else 401).
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    modules: { type: 'string' },
    dir: { type: 'string' },
    port: { type: 'string', default: '0' },
    token: { type: 'string' },
    'max-size': { type: 'string' },
    'expire-ms': { type: 'string' },
    's3-endpoint': { type: 'string' },
    's3-bucket': { type: 'string' },
    's3-key': { type: 'string' },
    's3-secret': { type: 'string' },
  },
});

const require = createRequire(path.join(path.resolve(args.modules), 'resolver.js'));
const load = (name) => import(pathToFileURL(require.resolve(name)).href);

const { Server } = await load('@tus/server');
const expire = args['expire-ms'] ? Number(args['expire-ms']) : 0;

let datastore;
if (args['s3-endpoint']) {
  const { S3Store } = await load('@tus/s3-store');
  datastore = new S3Store({
    partSize: 5 * 1024 * 1024,
    expirationPeriodInMilliseconds: expire,
    useTags: false,
    s3ClientConfig: {
      bucket: args['s3-bucket'],
      endpoint: args['s3-endpoint'],
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: args['s3-key'], secretAccessKey: args['s3-secret'] },
      // rclone serve s3 does not take the SDK's default CRC32 trailers
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    },
  });
} else {
  const { FileStore } = await load('@tus/file-store');
  datastore = new FileStore({ directory: args.dir, expirationPeriodInMilliseconds: expire });
}

const options = { path: '/files', datastore };
if (args['max-size']) options.maxSize = Number(args['max-size']);
if (args.token) {
  options.onIncomingRequest = async (req) => {
    if (req.headers.get('authorization') !== `Bearer ${args.token}`) {
      throw { status_code: 401, body: 'authentication required\n' };
    }
  };
}
const tus = new Server(options);

const server = http.createServer((req, res) => tus.handle(req, res));
server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
