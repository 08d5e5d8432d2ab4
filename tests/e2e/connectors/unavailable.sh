#!/bin/sh
# Answers an envelope whose inner status is 503 and whose error is null: Arena's rule 3 alone fails it.
printf '%s\n' '{"command_response_version": 2, "command_response": {"body": {"retry_after": 30}, "mimetype": "application/json", "http_status": 503, "headers": {}}, "error": null, "spiff__logs": []}'
