#!/bin/sh
# Example plusmoin trigger (shell + jq): sends one line per event to syslog
# (facility daemon, tag plusmoin-trigger), and a warning-level line for the
# events an operator must hear about. Configure it for any trigger, e.g.
#
#   "triggers": {"master_down": "/usr/share/plusmoin/triggers/syslog-event.sh",
#                "slave_down":  "/usr/share/plusmoin/triggers/syslog-event.sh", …}
#
# plusmoin writes the payload (README "Triggers") on stdin and sets PLUSMOIN_TRIGGER and
# PLUSMOIN_CLUSTER_ID. The pgpool handlers run beside this script: it need
# not call pcp itself.
set -eu
command -v jq >/dev/null 2>&1 || { echo "syslog-event.sh: jq is required" >&2; exit 1; }

payload=$(cat)
line=$(printf '%s' "$payload" | jq -r '
  def names(l): if (l|length) == 0 then "-" else (l | map(.name) | join(",")) end;
  "\(.event) cluster=\(.cluster_id)"
  + " node=" + (if .trigger then .trigger.name else "-" end)
  + " master=" + (if .master then .master.name else "none" end)
  + " slaves=" + names(.slaves)
  + " lost=" + names(.lost)')

case "${PLUSMOIN_TRIGGER:-}" in
  master_down|slave_down) priority=daemon.warning ;;
  *)                      priority=daemon.info ;;
esac

if command -v logger >/dev/null 2>&1; then
  logger -t plusmoin-trigger -p "$priority" -- "$line"
fi
# Also on stdout: plusmoin shows a trigger's output in its own log.
printf '%s\n' "$line"
