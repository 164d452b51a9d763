#!/usr/bin/env bash
# Makes one of each kind of RST inside a private network namespace, so that
# a running rsttrace has something to explain. Needs root, iproute2, nftables,
# python3. Touches nothing outside the namespace it creates (and deletes).
#   terminal 1: cargo xtask run
#   terminal 2: sudo demo/rst-zoo.sh
set -euo pipefail
ns=rsttrace-zoo
ip netns delete "$ns" 2>/dev/null || true
ip netns add "$ns"
trap 'ip netns delete "$ns"; rm -rf "$tmp"' EXIT
tmp=$(mktemp -d)
ip -n "$ns" link set lo up
in_ns() { ip netns exec "$ns" "$@"; }
# rsttrace starts following a new namespace's ruleset within a second.
sleep 1.5

# A "security agent": copies of nft and ss under an agent's process name.
mkdir "$tmp/nft" "$tmp/ss"
cp "$(command -v nft)" "$tmp/nft/crowdsec"
cp "$(command -v ss)" "$tmp/ss/crowdsec"

in_ns python3 - "$tmp" <<'PY'
import socket, subprocess, sys, time
tmp = sys.argv[1]

def conn(src, port, listener=None):
    c = socket.socket(); c.bind((src, 0)); c.connect(("127.0.0.1", port))
    return c, (listener.accept()[0] if listener else None)

# closed-port: a scanner probing ports nobody listens on
for port in (22, 23, 3306):
    s = socket.socket(); s.bind(("127.10.0.7", 0))
    try: s.connect(("127.0.0.1", port))
    except OSError: pass

# abort-on-close: the server closes without reading the request
l = socket.socket(); l.bind(("127.0.0.1", 8080)); l.listen()
c, s = conn("127.20.0.9", 8080, l); c.send(b"GET / HTTP/1.1\r\n\r\n"); time.sleep(0.05); s.close()

# socket-killed: an agent destroys a peer's connections (ss -K)
l2 = socket.socket(); l2.bind(("127.0.0.1", 443)); l2.listen()
keep = [conn("127.66.0.23", 443, l2) for _ in range(3)]
subprocess.run([f"{tmp}/ss/crowdsec", "-K", "dst", "127.66.0.23"], check=True, capture_output=True)

# netfilter-reject: the agent adds a firewall rule, the peer is refused
for cmd in ("add table inet blocklist",
            "add chain inet blocklist in { type filter hook input priority -10 ; }",
            "add rule inet blocklist in ip saddr 127.66.0.24 reject with tcp reset"):
    subprocess.run([f"{tmp}/nft/crowdsec"] + cmd.split(" "), check=True)
s = socket.socket(); s.bind(("127.66.0.24", 0))
try: s.connect(("127.0.0.1", 443))
except OSError: pass

# injected: a RST built by hand on a raw socket (tcpkill-style)
import struct
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0,
                 socket.inet_aton("127.0.0.1"), socket.inet_aton("127.40.0.2"))
raw.sendto(ip + struct.pack("!HHIIBBHHH", 443, 51000, 1, 0, 5 << 4, 0x04, 0, 0, 0), ("127.40.0.2", 0))

# netfilter-drop: a silent drop, no RST (the connect times out)
subprocess.run(["nft", "add", "rule", "inet", "blocklist", "in", "ip", "saddr", "127.50.0.5", "drop"], check=True)
s = socket.socket(); s.bind(("127.50.0.5", 0)); s.settimeout(0.3)
try: s.connect(("127.0.0.1", 443))
except OSError: pass
PY
echo "rst-zoo: done"
