#!/usr/bin/env python3
"""Example plusmoin trigger (Python): keeps a small JSON file per cluster
naming its current master, for tools that move a virtual IP or update DNS.

Configure it for master_up, master_down and plusmoin_up, e.g.

    "triggers": {"master_up":   "/usr/share/plusmoin/triggers/current-master.py /var/lib/plusmoin/masters",
                 "master_down": "/usr/share/plusmoin/triggers/current-master.py /var/lib/plusmoin/masters",
                 "plusmoin_up": "/usr/share/plusmoin/triggers/current-master.py /var/lib/plusmoin/masters"}

plusmoin runs it without a shell, with the event's payload (README "Triggers") on
stdin. The file cluster-N.json is replaced atomically, so a reader never sees
half of it. Exit status 0 on success; anything else is logged by plusmoin.
"""

import json
import os
import sys
import tempfile


def main() -> int:
    directory = sys.argv[1] if len(sys.argv) > 1 else "/var/lib/plusmoin/masters"
    payload = json.load(sys.stdin)
    cluster = payload["cluster_id"]
    master = payload.get("master")
    doc = {
        "cluster_id": cluster,
        "event": payload.get("event") or os.environ.get("PLUSMOIN_TRIGGER"),
        "master": master["name"] if master else None,
        "host": master["host"] if master else None,
        "port": master["port"] if master else None,
        "slaves": [s["name"] for s in payload.get("slaves", [])],
    }
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, f"cluster-{cluster}.json")
    fd, tmp = tempfile.mkstemp(prefix=".cluster-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # plusmoin shows this line in its log.
    print(f"cluster {cluster}: master {doc['master'] or 'none'} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
