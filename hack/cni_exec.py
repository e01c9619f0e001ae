"""What the campaign and bench scripts in hack/ share: entering a network
namespace, exec'ing a CNI plugin's environment as a runtime sets it, the
trellis node config they all hand the plugin, a percentile, and a
campaign's report and run.

Imported by hack/{bench-cni,churn-plugin,crash-plugin}.py, which Python runs
with hack/ on sys.path.
"""
import ctypes
import json
import os
import subprocess
import sys
import tempfile

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def setns_fd(fd, what="setns"):
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), what)


def setns(name):
    """Enter the named network namespace (/var/run/netns/NAME)."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        setns_fd(fd, f"setns {name}")
    finally:
        os.close(fd)


def plugin_env(verb, cid, netns, pod_namespace, pod_name, cni_path="/usr/lib/cni"):
    """A plugin's environment as a runtime sets it; netns is a name under
    /var/run/netns, or None for an empty CNI_NETNS."""
    return {
        "CNI_COMMAND": verb, "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/{netns}" if netns is not None else "",
        "CNI_IFNAME": "eth0", "CNI_PATH": cni_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod_namespace};K8S_POD_NAME={pod_name}",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


def trellis_conf(tmp, ipam_dir="ipam"):
    """Writes TMP/subnet.env (node subnet 10.244.1.0/24) and returns the trellis
    network config that uses it, with its store under TMP/IPAM_DIR."""
    subnet_env = os.path.join(tmp, "subnet.env")
    with open(subnet_env, "w") as f:
        f.write("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    return json.dumps({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "trellis",
        "subnetFile": subnet_env, "dataDir": os.path.join(tmp, ipam_dir),
    }).encode()


def pct(xs, q):
    """The q-quantile of xs (nearest rank), NaN for none."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


class NodeCampaign:
    """What a campaign on one node namespace starts from: its tag, the node
    namespace's name, a scratch dir, the trellis config and its store."""

    def __init__(self, kind):
        self.tag = f"{kind}{os.getpid()}"
        self.node = f"{self.tag}-node"
        self.tmp = tempfile.mkdtemp(prefix=f"trellis-{kind}-")
        self.conf = trellis_conf(self.tmp)
        self.store = os.path.join(self.tmp, "ipam", "cbr0")


def report(summary, result_path, brief_without):
    """Prints the summary without its bulky BRIEF_WITHOUT entry and writes all
    of it to RESULT_PATH when there is one."""
    print(json.dumps({k: v for k, v in summary.items() if k != brief_without}, indent=1))
    if result_path:
        with open(result_path, "w") as f:
            json.dump(summary, f, indent=1)


def del_netns(*names):
    for name in names:
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def run_campaign(campaign):
    """Runs CAMPAIGN().main() and exits with its code; whatever happens, this
    process returns to its own network namespace and the campaign cleans up."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    c = campaign()
    try:
        rc = c.main()
    finally:
        setns_fd(home)
        c.cleanup()
    sys.exit(rc)
