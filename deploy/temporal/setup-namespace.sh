#!/bin/sh
# Creates the namespace and Multinode's search attributes (all Keyword) once the Temporal server
# answers; runs in temporalio/admin-tools (service temporal-setup of docker-compose.temporal.yml).
# Idempotent. `mn worker` also registers the search attributes at start when it may
# (multinode/control_plane/worker.py ensure_search_attributes), so this only spares the worker that permission.
set -eu

NAMESPACE="${NAMESPACE:-default}"
RETENTION="${NAMESPACE_RETENTION:-7d}"
# Must match multinode/_protocol.py SEARCH_ATTRIBUTES.
SEARCH_ATTRIBUTES="MultinodeProject MultinodeFunction MultinodeVersion MultinodeStatus MultinodeParentInvocation"

# retry WHAT COMMAND...: run COMMAND until it succeeds, up to 60 times 2 s apart (the server may still
# be starting, and a new namespace takes a few seconds to reach every service's cache).
retry() {
  what="$1"
  shift
  attempt=1
  until "$@"; do
    if [ "$attempt" -ge 60 ]; then
      echo "Gave up: $what ($TEMPORAL_ADDRESS)." >&2
      return 1
    fi
    echo "Waiting: $what..."
    attempt=$((attempt + 1))
    sleep 2
  done
}

retry "Temporal to be healthy" temporal operator cluster health >/dev/null

if ! temporal operator namespace describe --namespace "$NAMESPACE" >/dev/null 2>&1; then
  temporal operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION"
  echo "Created namespace $NAMESPACE (retention $RETENTION)."
fi

listing="$(mktemp)"
trap 'rm -f "$listing"' EXIT
list_attributes() {
  temporal operator search-attribute list --namespace "$NAMESPACE" >"$listing" 2>/dev/null
}
retry "namespace $NAMESPACE to be ready" list_attributes
for name in $SEARCH_ATTRIBUTES; do
  if grep -qw "$name" "$listing"; then
    echo "Search attribute $name already exists."
  else
    retry "search attribute $name" \
      temporal operator search-attribute create --namespace "$NAMESPACE" --name "$name" --type Keyword
    echo "Created search attribute $name (Keyword)."
  fi
done
