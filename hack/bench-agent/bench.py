#!/usr/bin/env python3
"""trellis-agent at scale, against iproute2's -batch (driven by hack/bench-agent.sh).

`scale` runs inside the underlay namespace the shell script made (so the emulator and the
agent's health port are plain local/underlay addresses) and writes its samples as JSON:
  (1) agent start -> fully programmed (trellis_peers == N, /readyz 200, N routes in the kernel)
      in a fresh node namespace, interleaved with `ip -batch` + `bridge -batch` applying the
      identical entries (dumped from the agent's own result) in another fresh namespace;
  (2) with N peers programmed: one more Node created -> its route in the kernel (ip monitor);
  (3) the agent's VmRSS / VmHWM at N peers.
`report` prints the table from that JSON and the throughput samples of the Rust helper.
"""

import argparse
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time

OWN_NAME = "bench-self"
OWN_IP = "172.17.200.1"
API_IP = "172.17.200.254"
PREFIX_LEN = 16
OWN_CIDR = "10.99.0.0/24"
CM_NS, CM_NAME = "kube-flannel", "trellis-config"
HEALTH = f"{OWN_IP}:9402"


def sh(*args, stdin=None, check=True):
    p = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def peer_addr(i):
    """Pod CIDR and underlay address of peer i: 250 per /24, all on-link in 172.17/16."""
    a, b = divmod(i, 250)
    return f"10.{100 + a}.{b}.0/24", f"172.17.{a}.{b + 1}", f"0e:00:00:00:{a:02x}:{b:02x}"


def big_node(i, backend, name=None, cidr=None, ip=None, mac=None):
    """A Node shaped like a real one (~10 KB): conditions, addresses, nodeInfo, 40 images."""
    pc, pip, pmac = peer_addr(i)
    cidr, ip, mac = cidr or pc, ip or pip, mac or pmac
    name = name or f"node-{i:05}"
    images = [{"names": [f"registry.example.com/team-{k}/service-{k}@sha256:{i * 100 + k:064x}",
                         f"registry.example.com/team-{k}/service-{k}:v1.{k}.{i}"],
               "sizeBytes": 10_000_000 + k * 1000} for k in range(40)]
    conds = [{"type": t, "status": "True" if t == "Ready" else "False",
              "lastHeartbeatTime": "2025-01-01T00:00:00Z",
              "lastTransitionTime": "2025-01-01T00:00:00Z",
              "reason": f"Kubelet{t}", "message": f"kubelet reports {t} as expected"}
             for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]
    ann = {"flannel.alpha.coreos.com/backend-type": backend,
           "flannel.alpha.coreos.com/public-ip": ip,
           "flannel.alpha.coreos.com/kube-subnet-manager": "true",
           "node.alpha.kubernetes.io/ttl": "0",
           "volumes.kubernetes.io/controller-managed-attach-detach": "true"}
    if backend == "vxlan":
        ann["flannel.alpha.coreos.com/backend-data"] = json.dumps({"VNI": 1, "VtepMAC": mac})
    else:
        ann["flannel.alpha.coreos.com/backend-data"] = "null"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": ann,
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64",
                                "topology.kubernetes.io/zone": f"zone-{i % 3}"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "conditions": conds,
            "addresses": [{"type": "InternalIP", "address": ip},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "kernelVersion": "6.1.0",
                         "osImage": "Debian GNU/Linux 12",
                         "containerRuntimeVersion": "containerd://1.7.0",
                         "architecture": "amd64", "operatingSystem": "linux",
                         "machineID": f"{i:032x}", "systemUUID": f"{i:032x}",
                         "bootID": f"{i:032x}", "kubeProxyVersion": "v1.32.0"},
            "images": images,
        },
    }


def own_node():
    """The benchmarked node as kubelet registers it: no flannel annotations yet."""
    n = big_node(99_999, "vxlan", name=OWN_NAME, cidr=OWN_CIDR, ip=OWN_IP)
    n["metadata"]["annotations"] = {}
    return n


def seed_state(path, n, backend):
    """The emulator's state file: writing it beats creating N Nodes through the API."""
    objs = [own_node()] + [big_node(i, backend) for i in range(n)]
    with open(path, "w") as f:
        f.write(f'{{"resourceVersion":"{len(objs)}","objects":[')
        for k, o in enumerate(objs):
            o["metadata"].update(resourceVersion=str(k + 1),
                                 uid=f"00000000-0000-4000-8000-{k:012}",
                                 creationTimestamp="2025-01-01T00:00:00Z")
            f.write(("," if k else "") + '\n{"resource":"v1/nodes","object":' + json.dumps(o) + "}")
        f.write("\n]}\n")
    return len(json.dumps(big_node(0, backend)))


class Api:
    """Just enough of an HTTPS client for the emulator: bearer token, its own CA."""

    def __init__(self, d):
        self.token = open(os.path.join(d, "token")).read().strip()
        self.ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
        self.conn = None

    def request(self, method, path, body=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(API_IP, 6443, context=self.ctx,
                                                        timeout=10)
            try:
                data = json.dumps(body).encode() if body is not None else None
                self.conn.request(method, path, body=data, headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json"})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def http_get(path):
    try:
        c = http.client.HTTPConnection(HEALTH.split(":")[0], 9402, timeout=2)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    except OSError:
        return None, ""


class Emulator:
    def __init__(self, binary, d, n, backend):
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.node_bytes = seed_state(os.path.join(d, "state.json"), n, backend)
        self.log = open(os.path.join(d, "emulator.log"), "w")
        # The emulator rewrites its whole state file (10-50 MB here) after a change, where
        # kube-apiserver writes only the changed object to etcd: keep that off the CPU the
        # runs share (the state is written once, at exit).
        self.proc = subprocess.Popen([binary, "--listen", f"{API_IP}:6443", "--dir", d,
                                      "--persist-interval-ms", "3600000"],
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 120
        while True:
            if os.path.exists(os.path.join(d, "token")):
                try:
                    self.api = Api(d)
                    if self.api.request("GET", "/version")[0] == 200:
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"emulator did not come up, see {d}/emulator.log")
            time.sleep(0.1)
        conf = json.dumps({"Network": "10.0.0.0/8", "Backend": {"Type": backend}})
        for path, obj in [
            ("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": CM_NS}}),
            (f"/api/v1/namespaces/{CM_NS}/configmaps",
             {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": CM_NAME, "namespace": CM_NS},
              "data": {"net-conf.json": conf}})]:
            st, body = self.api.request("POST", path, obj)
            # The emulator may not serve Namespaces (404): ConfigMaps do not need one there.
            if st not in (201, 409) and not (st == 404 and path == "/api/v1/namespaces"):
                raise RuntimeError(f"POST {path}: {st} {body[:200]!r}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NodeNs:
    """A fresh node namespace: eth0 on the underlay bridge, OWN_IP/16."""

    def __init__(self, name):
        self.name = name
        sh("ip", "netns", "add", name)
        host = "v" + name[-12:]
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", host, "master", "br0", "up")
        sh("ip", "-n", name, "-batch", "-", stdin=(
            f"link set lo up\nlink set eth0 up\naddr add {OWN_IP}/{PREFIX_LEN} dev eth0\n"))

    def ip(self, *args):
        return sh("ip", "-n", self.name, *args)

    def delete(self):
        sh("ip", "netns", "del", self.name, check=False)
        # The kernel tears a namespace down in the background (thousands of entries here):
        # let it finish before the next run starts measuring.
        time.sleep(0.3)


def count(text):
    return sum(1 for line in text.splitlines() if line.strip())


def kernel_counts(ns, backend):
    routes = count(ns.ip("route", "show", "proto", "116"))
    if backend != "vxlan":
        return routes, routes, routes
    neigh = count(ns.ip("neigh", "show", "dev", "flannel.1", "nud", "permanent"))
    fdb = sum(1 for line in sh("bridge", "-n", ns.name, "fdb", "show", "dev", "flannel.1")
              .splitlines() if " dst " in line)
    return routes, neigh, fdb


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


class Agent:
    def __init__(self, binary, ns, workdir, kubeconfig):
        self.log = open(os.path.join(workdir, f"agent-{ns.name}.log"), "w")
        # `ip netns exec` execs the agent in place: the pid is the agent's.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, binary, "run", f"--kubeconfig={kubeconfig}",
             f"--node-name={OWN_NAME}", f"--configmap-namespace={CM_NS}",
             f"--configmap-name={CM_NAME}",
             f"--subnet-file={os.path.join(workdir, ns.name + '-subnet.env')}",
             f"--health-addr={HEALTH}", "--iface=eth0"],
            stdout=self.log, stderr=self.log)

    def wait_programmed(self, n, timeout=300):
        """Until /metrics says N peers after a reconcile and /readyz is 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}, see {self.log.name}")
            st, body = http_get("/metrics")
            if st == 200 and f"\ntrellis_peers {n}\n" in "\n" + body and \
                    "\ntrellis_ready 1" in "\n" + body and http_get("/readyz")[0] == 200:
                return
            time.sleep(0.01)
        raise RuntimeError(f"agent not programmed with {n} peers in {timeout}s, see {self.log.name}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def iproute2_scripts(ns):
    """The agent's programmed state as -batch input: device, neighbours, FDB, routes."""
    link = json.loads(ns.ip("-j", "-d", "link", "show", "flannel.1"))[0]
    vx = link["linkinfo"]["info_data"]
    addr = [a for a in json.loads(ns.ip("-j", "addr", "show", "dev", "flannel.1"))[0]["addr_info"]
            if a["family"] == "inet"][0]
    head = (f"link add flannel.1 address {link['address']} mtu {link['mtu']} type vxlan "
            f"id {vx['id']} dev eth0 local {vx['local']} dstport {vx['port']} nolearning\n"
            f"link set flannel.1 up\naddr add {addr['local']}/{addr['prefixlen']} dev flannel.1\n")
    neigh = "".join(f"neigh replace {e['dst']} lladdr {e['lladdr']} dev flannel.1 nud permanent\n"
                    for e in json.loads(ns.ip("-j", "neigh", "show", "dev", "flannel.1",
                                              "nud", "permanent")))
    fdb = "".join(f"fdb replace {e['mac']} dev flannel.1 dst {e['dst']} self permanent\n"
                  for e in json.loads(sh("bridge", "-j", "-n", ns.name, "fdb", "show",
                                         "dev", "flannel.1")) if "dst" in e)
    routes = "".join(f"route replace {r['dst']} via {r['gateway']} dev flannel.1 onlink proto 116\n"
                     for r in json.loads(ns.ip("-j", "route", "show", "proto", "116")))
    return [("ip", head + neigh), ("bridge", fdb), ("ip", routes)]


def hostgw_scripts(ns):
    routes = "".join(f"route replace {r['dst']} via {r['gateway']} dev eth0 proto 116\n"
                     for r in json.loads(ns.ip("-j", "route", "show", "proto", "116")))
    return [("ip", routes)]


def run_batches(ns, scripts):
    """Wall time of the -batch processes, as an agent start would pay them."""
    t = time.monotonic()
    for prog, script in scripts:
        sh(prog, "-n", ns.name, "-batch", "-", stdin=script)
    return time.monotonic() - t


class RouteWatch:
    """`ip monitor route` in the node namespace, timestamping each line as it arrives."""

    def __init__(self, ns):
        self.proc = subprocess.Popen(["ip", "-n", ns.name, "monitor", "route"],
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.cond = threading.Condition()
        self.seen = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            dst = line.split()[0] if line.split() else ""
            with self.cond:
                self.seen.setdefault(dst, now)
                self.cond.notify_all()

    def wait(self, dst, timeout=10):
        deadline = time.monotonic() + timeout
        with self.cond:
            while dst not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[dst]

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def scale(args):
    out = {"runs": []}
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "addr", "add", f"{API_IP}/{PREFIX_LEN}", "dev", "br0")
    sh("ip", "link", "set", "br0", "up")
    sh("ip", "link", "set", "lo", "up")
    seq = 0

    def fresh_ns():
        nonlocal seq
        seq += 1
        return NodeNs(f"{args.prefix}-n{seq}")

    for n in args.peers:
        backend = args.backend
        d = os.path.join(args.workdir, f"api-{n}")
        t = time.monotonic()
        emu = Emulator(args.emulator, d, n, backend)
        print(f"# N={n}: emulator up with {n} Nodes of {emu.node_bytes} B in "
              f"{time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
        kubeconfig = os.path.join(d, "kubeconfig")
        scripts = None
        try:
            # Run 0 warms the emulator and the page cache and gives the entries for -batch;
            # then `reps` rounds, rotating which side goes first.
            agents = ["agent"] + (["baseline"] if args.baseline else [])
            sides = agents + ["batch"]
            for rep in range(args.reps + 1):
                k = rep % len(sides)
                order = agents if rep == 0 else sides[k:] + sides[:k]
                if rep == args.reps and n == max(args.peers):
                    # The agent's last run adds the one-more Nodes: nothing may run after it
                    # expecting N.
                    order = [w for w in order if w != "agent"] + ["agent"]
                for what in order:
                    ns = fresh_ns()
                    try:
                        if what == "batch":
                            secs = run_batches(ns, scripts)
                            got = kernel_counts(ns, backend)
                            rec = {"n": n, "rep": rep, "what": "batch", "seconds": secs,
                                   "kernel": got}
                        else:
                            binary = args.agent if what == "agent" else args.baseline
                            t0 = time.monotonic()
                            agent = Agent(binary, ns, args.workdir, kubeconfig)
                            try:
                                agent.wait_programmed(n)
                                secs = time.monotonic() - t0
                                got = kernel_counts(ns, backend)
                                if scripts is None:
                                    scripts = (iproute2_scripts(ns) if backend == "vxlan"
                                               else hostgw_scripts(ns))
                                time.sleep(1)  # let allocations settle before reading RSS
                                mem = proc_status(agent.proc.pid)
                                rec = {"n": n, "rep": rep, "what": what, "seconds": secs,
                                       "kernel": got, "rss_kib": mem.get("VmRSS"),
                                       "hwm_kib": mem.get("VmHWM")}
                                if what == "agent" and rep == args.reps and n == max(args.peers):
                                    out["one_more"] = one_more(emu, agent, ns, n, backend,
                                                               args.one_more)
                                    mem = proc_status(agent.proc.pid)
                                    out["rss_after_one_more"] = mem
                            finally:
                                agent.stop()
                        if list(got) != [n] * len(got):
                            raise RuntimeError(f"{what} left {got} entries, want {n} each")
                        out["runs"].append(rec)
                        print(f"# {json.dumps(rec)}", file=sys.stderr, flush=True)
                    finally:
                        ns.delete()
        finally:
            emu.stop()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


def one_more(emu, agent, ns, n, backend, count_):
    """Create one more Node at a time; the time from the POST to its route in the kernel."""
    watch = RouteWatch(ns)
    samples = []
    try:
        time.sleep(0.5)
        for k in range(count_):
            i = n + 1 + k
            cidr = peer_addr(i)[0]
            t0 = time.monotonic()
            st, body = emu.api.request("POST", "/api/v1/nodes", big_node(i, backend))
            t_api = time.monotonic()
            if st != 201:
                raise RuntimeError(f"create node {i}: {st} {body[:200]!r}")
            t1 = watch.wait(cidr)
            if t1 is None:
                raise RuntimeError(f"route {cidr} never appeared, see {agent.log.name}")
            samples.append({"ms": (t1 - t0) * 1000, "api_ms": (t_api - t0) * 1000})
            time.sleep(0.3)
    finally:
        watch.stop()
    return samples


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def report(args):
    with open(args.scale) as f:
        s = json.load(f)
    rows = []
    has_baseline = any(r["what"] == "baseline" for r in s["runs"])

    def secs(n, what):
        """Per round (run 0 left out), in round order."""
        return [r["seconds"] for r in s["runs"]
                if r["n"] == n and r["what"] == what and r["rep"] > 0]

    def pairs(a, b):
        ratios = [x / y for x, y in zip(a, b)]
        return f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}..{max(ratios):.2f}]"

    for n in sorted({r["n"] for r in s["runs"]}):
        ag, ba = secs(n, "agent"), secs(n, "batch")
        first = [r["seconds"] for r in s["runs"]
                 if r["n"] == n and r["rep"] == 0 and r["what"] == "agent"][0]
        rows.append((f"(1) start -> programmed, N={n}: agent median (cold run 0)",
                     f"{statistics.median(ag) * 1000:.0f} ms ({first * 1000:.0f} ms)", ""))
        rows.append((f"    ip -batch + bridge -batch, N={n}: median",
                     f"{statistics.median(ba) * 1000:.0f} ms", ""))
        rows.append((f"    ratio agent / -batch, N={n}: median of pairs [min..max]",
                     pairs(ag, ba), "<= 1.5x"))
        if has_baseline:
            bl = secs(n, "baseline")
            rows.append((f"    baseline agent, N={n}: median",
                         f"{statistics.median(bl) * 1000:.0f} ms", ""))
            rows.append((f"    ratio agent / baseline, N={n}: median of pairs [min..max]",
                         pairs(ag, bl), ""))
    om = [x["ms"] for x in s.get("one_more", [])]
    if om:
        api = [x["api_ms"] for x in s["one_more"]]
        rows.append((f"(2) one more Node -> route in kernel ({len(om)}x): p50 / p90",
                     f"{q(om, .5):.1f} / {q(om, .9):.1f} ms", "p50 <= 20 ms"))
        rows.append(("    of which the POST itself: p50",
                     f"{q(api, .5):.1f} ms", ""))
    big = max(r["n"] for r in s["runs"])
    for what in ["agent", "baseline"] if has_baseline else ["agent"]:
        mem = [r for r in s["runs"] if r["n"] == big and r["what"] == what]
        rss = [r["rss_kib"] / 1024 for r in mem]
        hwm = [r["hwm_kib"] / 1024 for r in mem]
        rows.append((f"(3) {what} VmRSS / VmHWM at N={big}: median (max)",
                     f"{statistics.median(rss):.1f} ({max(rss):.1f}) / "
                     f"{statistics.median(hwm):.1f} ({max(hwm):.1f}) MiB", "<= 40 MiB"))
    for path in args.throughput:
        samples = []
        with open(path) as f:
            for line in f:
                if line.startswith("BENCH "):
                    samples.append(json.loads(line[6:]))
        if not samples:
            continue
        backend = samples[0]["backend"]
        node = [x["bits_per_second"] / 1e9 for x in samples if x["path"] == "node"]
        pod = [x["bits_per_second"] / 1e9 for x in samples if x["path"] == "pod"]
        ratios = [p / nd for p, nd in zip(pod, node)]
        rows.append((f"(4) {backend}: pod-to-pod / node-to-node Gbit/s (medians of {len(pod)})",
                     f"{statistics.median(pod):.2f} / {statistics.median(node):.2f}", ""))
        rows.append((f"    {backend}: ratio pod/node, median of pairs [min..max]",
                     f"{statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]", ""))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measure':<{w0}}  {'result':<{w1}}  goal")
    print("-" * (w0 + w1 + 16))
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scale")
    s.add_argument("--agent", required=True)
    s.add_argument("--baseline", help="another trellis-agent binary, run in the same rounds")
    s.add_argument("--emulator", required=True)
    s.add_argument("--workdir", required=True)
    s.add_argument("--prefix", required=True, help="name prefix of the namespaces made here")
    s.add_argument("--peers", type=int, nargs="+", default=[1000, 5000])
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--one-more", type=int, default=20)
    s.add_argument("--backend", default="vxlan", choices=["vxlan", "host-gw"])
    s.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("scale")
    r.add_argument("throughput", nargs="*")
    a = p.parse_args()
    scale(a) if a.cmd == "scale" else report(a)


if __name__ == "__main__":
    main()
