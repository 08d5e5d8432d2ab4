#!/bin/sh
# Never answers, so the gateway has to stop it at the manifest's time limit.
echo "Waiting for the warehouse." >&2
exec sleep 60
