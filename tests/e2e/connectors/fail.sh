#!/bin/sh
# Fails the way a broken connector does: a reason on stderr, then a non-zero exit status.
echo "The order service refused the request." >&2
exit 3
