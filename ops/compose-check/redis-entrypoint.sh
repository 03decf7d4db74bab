#!/bin/sh
# redis-server as the redis user, listening on every address of the container's own network
set -e
if [ "$1" = redis-server ]; then
    shift
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server --bind '* -::*' --protected-mode no "$@"
fi
exec "$@"
