"""Drive the fal emulator with fal's official Python client (`fal-client`).

usage: FAL_KEY=… fal_client_check.py EMULATOR_URL PHOTO_DIR

The only change from talking to fal.ai is the queue host: fal-client builds `https://` URLs
from FAL_QUEUE_RUN_HOST, and the emulator speaks plain HTTP, so the base URL is set on the
client module. Everything after the submit follows the URLs the emulator hands back.
"""
import functools
import http.server
import sys
import threading
import urllib.request

import fal_client
import fal_client.client as client_module

emulator, photo_dir = sys.argv[1].rstrip("/"), sys.argv[2]
client_module.QUEUE_URL_FORMAT = emulator + "/"

# Serve the input photo the way a CDN would.
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=photo_dir)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
image_url = f"http://127.0.0.1:{server.server_address[1]}/seeding-1024.jpg"
model = "fal-ai/flux-pro/kontext"

# submit → status → result
handle = fal_client.submit(model, arguments={"image_url": image_url, "prompt": "official client: submit"})
status = handle.status(with_logs=True)
assert type(status).__name__ in ("Queued", "InProgress", "Completed"), status
result = handle.get()
image = result["images"][0]
with urllib.request.urlopen(image["url"]) as r:
    data = r.read()
assert data[:3] == b"\xff\xd8\xff", "the result is a JPEG"
print(f"submit/status/get: {image['width']}x{image['height']} JPEG, {len(data)} bytes")

# subscribe (submit and wait, with queue updates)
updates = []
result = fal_client.subscribe(
    model,
    arguments={"image_url": image_url, "prompt": "official client: subscribe"},
    with_logs=True,
    on_queue_update=updates.append,
)
assert result["images"], result
print(f"subscribe: {len(updates)} queue updates, then a result")

# cancel
handle = fal_client.submit(model, arguments={"image_url": image_url, "prompt": "official client: cancel"})
handle.cancel()
print("cancel: accepted")

# a 422 surfaces as fal-client's error type
try:
    fal_client.submit(model, arguments={"image_url": image_url, "prompt": "[invalid]"})
    raise SystemExit("expected a 422")
except fal_client.client.FalClientHTTPError as e:  # type: ignore[attr-defined]
    assert e.status_code == 422, e
    print("422: raised FalClientHTTPError")
print("ok")
