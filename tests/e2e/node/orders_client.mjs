// Node gRPC client for nexus.orders.v1.OrdersService: proves the contracts work from
// a second language (@grpc/grpc-js + @grpc/proto-loader, loading the .proto files at
// run time).
//
// Usage: node tests/e2e/node/orders_client.mjs <host:port>
//
// Needs `npm ci` and the google/api protos in build/buf-deps/ (`scripts/lint` or
// `scripts/lint --deps-only` puts them there).
//
// On an insecure channel it: creates an order, gets it back, opens WatchOrders
// (include_existing) until the order shows up as CHANGE_TYPE_EXISTING, cancels the order
// while the stream is open and waits for its CHANGE_TYPE_CANCELLED change, cancels the
// stream, and finally gets an unknown id expecting NOT_FOUND. It prints ONE JSON object
// on stdout:
//   {"created": Order, "fetched": Order, "watch": [WatchOrdersResponse...],
//    "not_found_code": 5, "not_found_message": "..."}
// Messages use proto field names, enums as strings, int64 as strings, and every field
// present (defaults included; Timestamps as {"seconds": "...", "nanos": n}).
// Exit 0 on success; 1 (error on stderr) on anything unexpected; 2 on bad usage.
//
// TLS: with NEXUS_CACERT set (a PEM CA file) the channel is
// grpc.credentials.createSsl(ca, key, cert), presenting NEXUS_CERT/NEXUS_KEY as the
// client certificate when both are set (mutual TLS); NEXUS_SERVER_NAME overrides the
// name checked against the server's certificate.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const CALL_TIMEOUT_MS = 5_000;
const OVERALL_TIMEOUT_MS = 20_000;
const CUSTOMER_ID = "node-customer";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
// proto-loader (protobufjs) ships google/protobuf/* itself, descriptor.proto included.
const INCLUDE_DIRS = [path.join(REPO_ROOT, "proto"), path.join(REPO_ROOT, "build", "buf-deps")];

function fail(message) {
  process.stderr.write(`orders_client: ${message}\n`);
  process.exit(1);
}

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS);
}

function describe(err) {
  // grpc-js status errors read "<code> <NAME>: <details>"; show no stack for them.
  if (err && typeof err.code === "number") return `gRPC error: ${err.message}`;
  return err instanceof Error ? err.stack ?? err.message : String(err);
}

function loadOrdersService() {
  const annotations = path.join(INCLUDE_DIRS[1], "google", "api", "annotations.proto");
  if (!existsSync(annotations)) {
    throw new Error(`${annotations} is missing: run scripts/lint (or scripts/lint --deps-only) first`);
  }
  const definition = protoLoader.loadSync("nexus/orders/v1/orders.proto", {
    includeDirs: INCLUDE_DIRS,
    keepCase: true, // proto field names, not lowerCamelCase
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition);
  return pkg.nexus.orders.v1.OrdersService;
}

// Call metadata: the bearer token given on the command line.
const callMetadata = new grpc.Metadata();

function channelCredentials() {
  const { NEXUS_CACERT: ca, NEXUS_CERT: cert, NEXUS_KEY: key } = process.env;
  if (!ca) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(
    readFileSync(ca),
    key && cert ? readFileSync(key) : null,
    key && cert ? readFileSync(cert) : null,
  );
}

function channelOptions() {
  const name = process.env.NEXUS_SERVER_NAME;
  return name ? { "grpc.ssl_target_name_override": name, "grpc.default_authority": name } : {};
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, callMetadata, { deadline: deadline() }, (err, response) => {
      if (err) {
        err.message = `${method}: ${err.message}`;
        reject(err);
      } else {
        resolve(response);
      }
    });
  });
}

// Opens WatchOrders and returns helpers to wait for a particular change. Every change
// received is appended to `changes`.
function openWatch(client, request) {
  const call = client.WatchOrders(request, callMetadata, { deadline: deadline() });
  const changes = [];
  let waiter = null; // { predicate, resolve, reject, what }
  let ended = null; // Error once the stream failed or ended

  const settle = () => {
    if (!waiter) return;
    const found = changes.find(waiter.predicate);
    if (found) {
      const { resolve } = waiter;
      waiter = null;
      resolve(found);
    } else if (ended) {
      const { reject, what } = waiter;
      waiter = null;
      reject(new Error(`WatchOrders: ${ended.message} before ${what}; received ${JSON.stringify(changes)}`));
    }
  };

  call.on("data", (change) => {
    changes.push(change);
    settle();
  });
  call.on("error", (err) => {
    ended = new Error(`stream failed with ${describe(err)}`);
    settle();
  });
  call.on("end", () => {
    ended ??= new Error("server ended the stream");
    settle();
  });

  return {
    call,
    changes,
    waitFor(what, predicate) {
      if (waiter) return Promise.reject(new Error("one wait at a time"));
      return new Promise((resolve, reject) => {
        waiter = { what, predicate, resolve, reject };
        settle();
      });
    },
    cancel() {
      // grpc-js then emits 'error' with CANCELLED, which is expected here.
      ended ??= new Error("stream cancelled by the client");
      call.cancel();
    },
  };
}

async function run(target) {
  const OrdersService = loadOrdersService();
  const client = new OrdersService(target, channelCredentials(), channelOptions());
  try {
    const created = await unary(client, "CreateOrder", {
      order: {
        customer_id: CUSTOMER_ID,
        items: [{ sku: "BOOK-1", quantity: 2 }], // priced by the server
        currency_code: "EUR",
      },
    });
    if (!created.id) throw new Error(`CreateOrder returned no id: ${JSON.stringify(created)}`);

    const fetched = await unary(client, "GetOrder", { id: created.id });

    const watch = openWatch(client, { customer_id: CUSTOMER_ID, include_existing: true });
    let cancelled;
    try {
      await watch.waitFor(
        `CHANGE_TYPE_EXISTING for order ${created.id}`,
        (c) => c.change_type === "CHANGE_TYPE_EXISTING" && c.order?.id === created.id,
      );
      // The CANCELLED change may arrive before or after CancelOrder's reply.
      [cancelled] = await Promise.all([
        unary(client, "CancelOrder", { id: created.id, reason: "node e2e client" }),
        watch.waitFor(
          `CHANGE_TYPE_CANCELLED for order ${created.id}`,
          (c) => c.change_type === "CHANGE_TYPE_CANCELLED" && c.order?.id === created.id,
        ),
      ]);
    } finally {
      watch.cancel();
    }
    if (cancelled.status !== "ORDER_STATUS_CANCELLED") {
      throw new Error(`CancelOrder returned status ${cancelled.status}`);
    }

    const unknownId = `node-missing-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    let notFound;
    try {
      const order = await unary(client, "GetOrder", { id: unknownId });
      throw new Error(`GetOrder(${unknownId}) succeeded, expected an error: ${JSON.stringify(order)}`);
    } catch (err) {
      // A customer asking for an order that is not theirs (or does not exist) is
      // refused the same way either way: PERMISSION_DENIED.
      if (err?.code !== grpc.status.PERMISSION_DENIED) throw err;
      notFound = err;
    }

    return {
      created,
      fetched,
      watch: watch.changes,
      not_found_code: notFound.code,
      not_found_message: notFound.details,
    };
  } finally {
    client.close();
  }
}

const args = process.argv.slice(2);
if (args.length !== 2 || args[0].startsWith("-")) {
  process.stderr.write("usage: node tests/e2e/node/orders_client.mjs <host:port> <access token>\n");
  process.exit(2);
}
callMetadata.set("authorization", `Bearer ${args[1]}`);

const overall = setTimeout(
  () => fail(`gave up after ${OVERALL_TIMEOUT_MS / 1000} s overall`),
  OVERALL_TIMEOUT_MS,
);

try {
  const result = await run(args[0]);
  clearTimeout(overall);
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
} catch (err) {
  fail(describe(err));
}
