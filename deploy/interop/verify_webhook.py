"""Verify a captured JewelShot webhook with the Standard Webhooks reference library.

usage: verify_webhook.py SECRET BODY_FILE HEADERS_JSON
Exits 0 and prints "verified" when the signature is valid; non-zero otherwise.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

secret, body_path, headers_json = sys.argv[1:4]
with open(body_path, "rb") as f:
    body = f.read()
headers = json.loads(headers_json)
Webhook(secret).verify(body, headers)
print("verified")
