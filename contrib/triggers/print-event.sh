#!/bin/sh
# Example plusmoin trigger: prints one line per event, e.g.
#   slave_down in cluster 0: 127.0.0.1:5434 (lost) | master 127.0.0.1:5432 | slaves: 127.0.0.1:5433 | lost: 127.0.0.1:5434
# plusmoin writes the payload (README "Triggers") on stdin and sets PLUSMOIN_TRIGGER and
# PLUSMOIN_CLUSTER_ID. Uses jq when it is installed, else prints the raw JSON.
set -eu
if command -v jq >/dev/null 2>&1; then
  jq -r --arg t "${PLUSMOIN_TRIGGER:-?}" '
    def names(l): if (l|length) == 0 then "-" else (l | map(.name) | join(", ")) end;
    "\($t) in cluster \(.cluster_id): "
    + (if .trigger then "\(.trigger.name) (\(.trigger.state))" else "-" end)
    + " | master " + (if .master then .master.name else "none" end)
    + " | slaves: " + names(.slaves)
    + " | lost: " + names(.lost)
    + " | clusterless: " + names(.clusterless)'
else
  printf '%s in cluster %s: ' "${PLUSMOIN_TRIGGER:-?}" "${PLUSMOIN_CLUSTER_ID:-?}"
  cat
  echo
fi
