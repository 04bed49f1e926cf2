// Drive the fal emulator with fal's official JavaScript client (`@fal-ai/client`).
//
// usage: node check.mjs EMULATOR_URL PHOTO_DIR
//
// The client builds https://queue.fal.run/... URLs itself; its documented `requestMiddleware`
// hook points them at the emulator. Everything else is the client as shipped.
import { createFalClient, ApiError } from "@fal-ai/client";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

const [emulator, photoDir] = process.argv.slice(2);
const model = "fal-ai/flux-pro/kontext";

const server = createServer(async (req, res) => {
  try {
    const body = await readFile(join(photoDir, "seeding-1024.jpg"));
    res.writeHead(200, { "content-type": "image/jpeg" }).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const imageUrl = `http://127.0.0.1:${server.address().port}/seeding-1024.jpg`;

const fal = createFalClient({
  credentials: "interop-key",
  requestMiddleware: async (request) => ({
    ...request,
    url: request.url.replace(/^https:\/\/(queue\.)?fal\.run/, emulator.replace(/\/$/, "")),
  }),
});

const check = (cond, msg) => {
  if (!cond) throw new Error(msg);
};

// submit → status → result
const { request_id: requestId } = await fal.queue.submit(model, {
  input: { image_url: imageUrl, prompt: "official js client: submit" },
});
const status = await fal.queue.status(model, { requestId, logs: true });
check(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(status.status), `status ${status.status}`);
const updates = [];
const result = await fal.subscribe(model, {
  input: { image_url: imageUrl, prompt: "official js client: subscribe" },
  logs: true,
  pollInterval: 50,
  onQueueUpdate: (u) => updates.push(u.status),
});
const image = result.data.images[0];
const bytes = Buffer.from(await (await fetch(image.url)).arrayBuffer());
check(bytes[0] === 0xff && bytes[1] === 0xd8, "the result is a JPEG");
console.log(`subscribe: ${updates.length} queue updates, ${image.width}x${image.height} JPEG, ${bytes.length} bytes`);
await fal.queue.result(model, { requestId }).catch(async () => {
  // The first request may still be running; wait for it like a client would.
  await fal.queue.subscribeToStatus(model, { requestId, pollInterval: 50 });
});
const first = await fal.queue.result(model, { requestId });
check(first.data.images.length === 1, "submit/result returned an image");
console.log("submit/status/result: ok");

// cancel
const { request_id: toCancel } = await fal.queue.submit(model, {
  input: { image_url: imageUrl, prompt: "official js client: cancel" },
});
await fal.queue.cancel(model, { requestId: toCancel }).catch((e) => {
  // The client treats fal's 400 ALREADY_COMPLETED as an error; anything else is a failure.
  check(e instanceof ApiError && e.status === 400, `cancel failed: ${e}`);
});
console.log("cancel: ok");

// a 422 surfaces as the client's error type
try {
  await fal.queue.submit(model, { input: { image_url: imageUrl, prompt: "[invalid]" } });
  throw new Error("expected a 422");
} catch (e) {
  check(e instanceof ApiError && e.status === 422, `expected ApiError 422, got ${e}`);
  console.log("422: ApiError");
}
server.close();
console.log("ok");
