#!/usr/bin/env bash
# Makes one of each kind of RST (and of silent drop) inside a private network
# namespace, so that a running rsttrace has something to explain. Needs root,
# iproute2 (ip, tc), nftables, procps (kill), python3. Touches nothing outside
# the namespace it creates (and deletes).
#   terminal 1: cargo xtask run
#   terminal 2: sudo demo/rst-zoo.sh
# RST_ZOO_WAIT=N waits N seconds between setting the namespace up (its
# CrowdSec-shaped block list, a tc filter) and the traffic: start rsttrace
# then, and the block list predates the trace, as an agent's usually does.
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

# A "security agent": copies of nft and ss under an agent's process name,
# and of kill under another's.
mkdir "$tmp/nft" "$tmp/ss" "$tmp/kill"
cp "$(command -v nft)" "$tmp/nft/crowdsec"
cp "$(command -v ss)" "$tmp/ss/crowdsec"
cp /usr/bin/kill "$tmp/kill/falcon-sensor"

# A block list as CrowdSec's firewall bouncer (nftables mode) keeps it.
in_ns nft -f - <<'NFT'
table ip crowdsec {
	set crowdsec-blacklists {
		type ipv4_addr
		flags timeout
		elements = { 127.66.0.30 timeout 4h comment "crowdsecurity/ssh-bf" }
	}
	chain crowdsec-chain {
		type filter hook input priority filter - 10; policy accept;
		ip saddr @crowdsec-blacklists counter reject with tcp reset
	}
}
# ... and one as fail2ban's nftables action keeps it, with its default
# blocktype: `reject` answers TCP with ICMP port unreachable, not a RST.
table inet f2b-table {
	set addr-set-sshd {
		type ipv4_addr
		elements = { 127.66.0.31 }
	}
	chain f2b-chain {
		type filter hook input priority -1;
		tcp dport { 22 } ip saddr @addr-set-sshd counter reject
	}
}
NFT
# A tc ingress filter (classic BPF, direct action) dropping 127.70.0.7's
# SYNs, as a BPF network policy would.
in_ns tc qdisc add dev lo clsact
in_ns tc filter add dev lo ingress bpf da bytecode \
    "12,40 0 0 12,21 0 8 2048,32 0 0 26,21 0 6 2135293959,48 0 0 23,21 0 4 6,177 0 0 14,80 0 0 27,84 0 0 18,21 1 0 2,6 0 0 0,6 0 0 2"
# A full accept queue answers with a RST instead of dropping.
in_ns sysctl -qw net.ipv4.tcp_abort_on_overflow=1
echo "rst-zoo: namespace $ns ready"
sleep "${RST_ZOO_WAIT:-0}"

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
s.close()  # no retransmissions

# netfilter-reject from the block list loaded before the trace
for _ in range(3):
    s = socket.socket(); s.bind(("127.66.0.30", 0))
    try: s.connect(("127.0.0.1", 443))
    except OSError: pass

# netfilter-reject-icmp: fail2ban's reject, answered with ICMP (a refused
# connect all the same)
s = socket.socket(); s.bind(("127.66.0.31", 0))
try: s.connect(("127.0.0.1", 22))
except OSError: pass

# tc-drop: the tc filter drops this client's SYN (the connect times out)
s = socket.socket(); s.bind(("127.70.0.7", 0)); s.settimeout(0.3)
try: s.connect(("127.0.0.1", 443))
except OSError: pass
s.close()  # no retransmissions

# listen-overflow: a server that stopped accepting; its queue holds 2
l3 = socket.socket(); l3.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
l3.bind(("127.0.0.1", 8083)); l3.listen(16)
queued = [conn("127.30.0.2", 8083)[0] for _ in range(2)]
over = [conn("127.30.0.1", 8083)[0] for _ in range(3)]
l3.listen(1); time.sleep(2.5)
for c in queued + over:
    c.send(b"x")
time.sleep(0.2)

# a server killed by a security agent (SIGKILL) with two requests unread
import os
l4 = socket.socket(); l4.bind(("127.0.0.1", 8084)); l4.listen()
pid = os.fork()
if pid == 0:
    held = [l4.accept()[0] for _ in range(2)]
    time.sleep(60)
    os._exit(0)
clients = [conn("127.80.0.4", 8084)[0] for _ in range(2)]
for c in clients: c.send(b"GET /orders HTTP/1.1\r\n\r\n")
time.sleep(0.3)
subprocess.run([f"{tmp}/kill/falcon-sensor", "-9", str(pid)], check=True)
os.waitpid(pid, 0)
time.sleep(0.2)

# linger-abort by a web-application firewall inside the server: httpd has
# ModSecurity loaded and aborts blocked requests (SO_LINGER 0). rsttrace
# names in-process agents by the libraries a process has mapped, so any
# library under ModSecurity's file name stands in (a copy of libm here).
import ctypes, shutil
libm = next(l.split()[-1] for l in open("/proc/self/maps") if "/libm.so" in l)
shutil.copy(libm, f"{tmp}/libmodsecurity.so.3")
l5 = socket.socket(); l5.bind(("127.0.0.1", 8085)); l5.listen()
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(15, b"httpd")  # PR_SET_NAME
    ctypes.CDLL(f"{tmp}/libmodsecurity.so.3")
    for _ in range(2):
        s, _ = l5.accept(); s.recv(1024)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
    time.sleep(1)  # alive while rsttrace reads its maps
    os._exit(0)
for i in range(2):
    c = conn("127.90.0.8", 8085)[0]; c.send(b"GET /?id=1%27%20OR%201=1 HTTP/1.1\r\n\r\n")
    try: c.recv(1)
    except OSError: pass
os.waitpid(pid, 0)
PY
echo "rst-zoo: done"
# RST_ZOO_HOLD=N keeps the namespace N seconds more: a trace names the
# rules behind drops when it reports, in namespaces still there.
sleep "${RST_ZOO_HOLD:-0}"
