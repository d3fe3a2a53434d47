"""A private network of "nodes" on this machine, for the two-node SLURM tests.

Each node is a network namespace with one veth interface (``svnet0``) and its own address on a
/24 that the test picks among unused ones; the other ends of the veths hang on a Linux bridge in
this (the root) namespace, which holds .254, so the test's own processes (sbatch, scontrol)
reach every node.  A process started with ``wrap(node, cmd)`` runs inside the node's namespace
with the node's hostname (a UTS namespace of its own); whatever it starts, SLURM job steps
included, stays there.  The host ends of the veths count every byte a node sends or receives,
which is how a test shows traffic really crossed between nodes.

Needs root, iproute2 (``ip``) and util-linux (``unshare``); ``remove()`` kills what still runs
in the namespaces (only this network's processes can be there) and deletes the namespaces,
links and bridge.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time

NODE_IFNAME = "svnet0"  # the interface inside each node (not eth0, so nothing may assume it)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def unavailable_reason() -> str | None:
    """Why namespaces with veths and a bridge cannot be made here, or None if they can (tried)."""
    missing = [b for b in ("ip", "nsenter", "unshare") if shutil.which(b) is None]
    if missing:
        return f"{' and '.join(missing)} not found (apt-get install -y iproute2 util-linux)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = NamespaceNetwork(["probe"], tag=f"p{os.getpid():x}")
    try:
        probe.create()
    except (RuntimeError, OSError) as exc:
        return f"cannot create a network namespace with a veth on a bridge: {exc}"
    finally:
        probe.remove()
    return None


def _unused_subnet() -> ipaddress.IPv4Network:
    used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr", "show").stdout
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if f"{net.network_address}".rsplit(".", 1)[0] + "." not in used:
            return net
    raise RuntimeError("no unused 10.x.y.0/24 subnet found")


class NamespaceNetwork:
    """``NamespaceNetwork(["n1", "n2"]).create()``; ``addr("n1")``, ``wrap("n1", cmd)``, ``remove()``."""

    def __init__(self, nodes: list[str], tag: str | None = None):
        self.nodes = list(nodes)
        self.tag = tag or f"sv{os.getpid():x}"  # unique among live processes: parallel tests don't clash
        self.subnet: ipaddress.IPv4Network | None = None
        self.bridge = f"{self.tag}b"

    # -- names and addresses ----------------------------------------------------------------------
    def namespace(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def host_veth(self, node: str) -> str:
        return f"{self.tag}v{self.nodes.index(node)}"

    def addr(self, node: str) -> str:
        return str(self.subnet.network_address + self.nodes.index(node) + 1)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 254)

    # -- life cycle -------------------------------------------------------------------------------
    def create(self) -> NamespaceNetwork:
        self.subnet = _unused_subnet()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node in self.nodes:
            ns, veth = self.namespace(node), self.host_veth(node)
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", NODE_IFNAME, "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(node)}/24", "dev", NODE_IFNAME)
            _ip("-n", ns, "link", "set", NODE_IFNAME, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def remove(self) -> None:
        """Kill what still runs in the namespaces, then delete them (their veths go with them)
        and the bridge.  Never raises: it runs in teardown."""
        for node in self.nodes:
            ns = self.namespace(node)
            for pid in self.pids(node):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while self.pids(node) and time.monotonic() < deadline:
                time.sleep(0.1)
            _ip("netns", "delete", ns, check=False)
            _ip("link", "delete", self.host_veth(node), check=False)  # if the namespace was never made
        _ip("link", "delete", self.bridge, check=False)

    def __enter__(self) -> NamespaceNetwork:
        try:
            return self.create()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- use ------------------------------------------------------------------------------------
    def wrap(self, node: str, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the node: its network namespace, and a UTS namespace named after it.
        Every step execs the next, so the pid Popen returns is ``cmd``'s own.  (nsenter, not
        `ip netns exec`: that remounts /sys, hiding /sys/fs/cgroup, without which slurmd won't start.)"""
        return [
            "nsenter",
            f"--net=/run/netns/{self.namespace(node)}",
            "--",
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            node,
            *cmd,
        ]

    def pids(self, node: str) -> list[int]:
        res = _ip("netns", "pids", self.namespace(node), check=False)
        return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []

    def traffic(self, node: str) -> dict[str, int]:
        """Bytes the node has sent and received over its interface so far (read on the host end
        of its veth, where the node's sending is receiving)."""
        stats = f"/sys/class/net/{self.host_veth(node)}/statistics"
        read = lambda name: int(open(f"{stats}/{name}").read())  # noqa: E731
        return {"sent": read("rx_bytes"), "received": read("tx_bytes")}
