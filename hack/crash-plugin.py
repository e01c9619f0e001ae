#!/usr/bin/env python3
"""Crash-injection campaign for the trellis CNI plugin.

Each run: start an ADD, SIGKILL the plugin after a random delay between 0
and ~1.3x a measured ADD's duration, infer from what it left behind which
stage it reached, then do what a runtime does after a failed ADD: DEL, ADD
again (same container id, ifname and netns), DEL. Checked after every run:
the kill left no lock held and a sane last_reserved_ip; the DEL and the
retried ADD succeed; the retried ADD's address is on the pod's eth0, is
recorded for this container and answers ping from the pod to its gateway;
after the final DEL no record, no `trl*` veth and no pod interface is left.
  usage: crash-plugin.py PLUGIN RUNS [RESULT_JSON]
"""
import collections
import fcntl
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from cni_exec import NodeCampaign, del_netns, plugin_env, report, run_campaign, setns_fd

PLUGIN = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 300
RESULT = sys.argv[3] if len(sys.argv) > 3 else None
SUBNET = ipaddress.ip_network("10.244.1.0/24")
GATEWAY = "10.244.1.1"


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


class Campaign(NodeCampaign):
    def __init__(self):
        super().__init__("crash")
        self.problems = []
        self.pods = []

    def env(self, verb, cid, pod):
        return plugin_env(verb, cid, pod, "crash", "victim")

    def start(self, verb, cid, pod):
        p = subprocess.Popen([PLUGIN], env=self.env(verb, cid, pod), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p.stdin.write(self.conf)
        p.stdin.close()
        return p

    def cni(self, verb, cid, pod):
        p = self.start(verb, cid, pod)
        out = p.stdout.read()
        p.wait()
        return p.returncode, out.decode(errors="replace")

    # --- what is on the node -------------------------------------------------
    def records(self):
        """{ip name: content} for files named like an address."""
        out = {}
        try:
            names = os.listdir(self.store)
        except FileNotFoundError:
            return out
        for n in names:
            try:
                ipaddress.ip_address(n)
            except ValueError:
                continue
            with open(os.path.join(self.store, n), "rb") as f:
                out[n] = f.read().decode(errors="replace")
        return out

    def strays(self):
        try:
            names = os.listdir(self.store)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n != "lock" and not n.startswith("last_reserved_ip.")
                      and n not in self.records())

    def trl_links(self):
        return sorted(n for _, n in socket.if_nameindex() if n.startswith("trl"))

    def settled_trl_links(self):
        deadline = time.monotonic() + 3
        while True:
            left = self.trl_links()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.01)

    def pod_state(self, pod):
        links = sh("ip", "-n", pod, "-o", "link", "show")
        has_eth0 = any(ln.split(":")[1].strip().split("@")[0] == "eth0" for ln in links.splitlines())
        addrs = sh("ip", "-n", pod, "-o", "-4", "addr", "show", "dev", "eth0", check=False) if has_eth0 else ""
        route = sh("ip", "-n", pod, "route", "show", "default") if has_eth0 else ""
        return has_eth0, addrs, route, links

    def lock_is_free(self):
        path = os.path.join(self.store, "lock")
        if not os.path.exists(path):
            return True
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def hint_is_sane(self):
        """last_reserved_ip.0: absent, empty, or an address of the range."""
        try:
            with open(os.path.join(self.store, "last_reserved_ip.0")) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return True, ""
        if not text:
            return True, text
        try:
            return ipaddress.ip_address(text) in SUBNET, text
        except ValueError:
            return False, text

    def stage(self, cid, pod):
        recs = self.records()
        mine = [ip for ip, c in recs.items() if c.split("\r\n")[0] == cid]
        empty = [ip for ip, c in recs.items() if not c.strip()]
        veths = self.trl_links()
        has_eth0, addrs, route, _ = self.pod_state(pod)
        if route.strip():
            return "routed (ADD complete)"
        if "inet " in addrs:
            return "pod address set"
        if veths or has_eth0:
            return "veth created"
        if mine:
            return "address reserved"
        if empty:
            return "record created, not written"
        return "nothing written"

    # --- one run ------------------------------------------------------------
    def problem(self, run, msg):
        self.problems.append(f"run {run}: {msg}")
        print(f"PROBLEM run {run}: {msg}", file=sys.stderr, flush=True)

    def one(self, run, delay_ms):
        pod = f"{self.tag}-p{run}"
        self.pods.append(pod)
        sh("ip", "netns", "add", pod)
        cid = f"{self.tag}-c{run}"
        p = self.start("ADD", cid, pod)
        time.sleep(delay_ms / 1000)
        finished = p.poll() is not None
        if not finished:
            p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        stage = self.stage(cid, pod)
        if finished:
            stage = "exited before the kill"
        if not self.lock_is_free():
            self.problem(run, "IPAM lock still held after the kill")
        ok, hint = self.hint_is_sane()
        if not ok:
            self.problem(run, f"last_reserved_ip.0 holds {hint!r}")

        rc, out = self.cni("DEL", cid, pod)
        if rc != 0:
            self.problem(run, f"DEL after the kill failed: {out}")
        rc, out = self.cni("ADD", cid, pod)
        if rc != 0:
            self.problem(run, f"retried ADD failed: {out}")
        else:
            res = json.loads(out)
            ip = res["ips"][0]["address"].split("/")[0]
            _, addrs, route, _ = self.pod_state(pod)
            rec = self.records().get(ip)
            if f"inet {ip}/24" not in addrs:
                self.problem(run, f"retried ADD answered {ip} but eth0 has {addrs!r}")
            if rec != f"{cid}\r\neth0":
                self.problem(run, f"record for {ip} is {rec!r}")
            if f"via {GATEWAY}" not in route:
                self.problem(run, f"no default route: {route!r}")
            others = [k for k, c in self.records().items() if k != ip]
            if others:
                self.problem(run, f"records besides {ip}: {others}")
            if subprocess.run(["ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "2", GATEWAY],
                              capture_output=True).returncode != 0:
                self.problem(run, f"pod {ip} cannot ping its gateway")
        rc, out = self.cni("DEL", cid, pod)
        if rc != 0:
            self.problem(run, f"final DEL failed: {out}")
        left = self.settled_trl_links()
        if left:
            self.problem(run, f"leaked host veths {left}")
            for n in left:
                sh("ip", "link", "del", n, check=False)
        recs = self.records()
        if recs:
            self.problem(run, f"leaked records {recs}")
            for n in recs:
                os.unlink(os.path.join(self.store, n))
        if self.strays():
            self.problem(run, f"stray files in the store {self.strays()}")
        has_eth0, _, _, links = self.pod_state(pod)
        if has_eth0:
            self.problem(run, f"pod interfaces left: {links!r}")
        if not self.lock_is_free():
            self.problem(run, "IPAM lock held after the final DEL")
        sh("ip", "netns", "del", pod)
        self.pods.remove(pod)
        return stage

    def calibrate(self):
        times = []
        for i in range(7):
            pod = f"{self.tag}-cal{i}"
            self.pods.append(pod)
            sh("ip", "netns", "add", pod)
            # From the moment Popen returns (the plugin is exec'd) to its
            # exit: the window the kill delays must cover.
            p = self.start("ADD", f"cal{i}", pod)
            t = time.perf_counter()
            out = p.stdout.read().decode(errors="replace")
            rc = p.wait()
            times.append((time.perf_counter() - t) * 1000)
            if rc != 0:
                raise SystemExit(f"calibration ADD failed: {out}")
            self.cni("DEL", f"cal{i}", pod)
            self.settled_trl_links()
            sh("ip", "netns", "del", pod)
            self.pods.remove(pod)
        return statistics.median(times[1:])

    def main(self):
        sh("ip", "netns", "add", self.node)
        sh("ip", "-n", self.node, "link", "set", "lo", "up")
        fd = os.open(f"/var/run/netns/{self.node}", os.O_RDONLY)
        setns_fd(fd)
        os.close(fd)
        add_ms = self.calibrate()
        hi = add_ms * 1.2
        load_start = open("/proc/loadavg").read().split()[:3]
        print(f"crash: {RUNS} runs, ADD takes ~{add_ms:.1f} ms here, kill delays uniform in 0..{hi:.1f} ms, "
              f"load {' '.join(load_start)}", flush=True)
        stages = collections.Counter()
        t0 = time.monotonic()
        for run in range(RUNS):
            stages[self.one(run, random.uniform(0, hi))] += 1
            if (run + 1) % 50 == 0:
                print(f"  {run + 1} runs, {len(self.problems)} problems", flush=True)
        load_end = open("/proc/loadavg").read().split()[:3]
        order = ["nothing written", "record created, not written", "address reserved", "veth created",
                 "pod address set", "routed (ADD complete)", "exited before the kill"]
        print("\nkills by the stage the ADD had reached:")
        for s in order:
            print(f"  {s:<30} {stages.get(s, 0)}")
        summary = {"runs": RUNS, "add_ms": round(add_ms, 2), "max_delay_ms": round(hi, 2),
                   "duration_s": round(time.monotonic() - t0, 1), "stages": dict(stages),
                   "problems": self.problems, "load_start": load_start, "load_end": load_end}
        report(summary, RESULT, "stages")
        print("RESULT:", "FAIL" if self.problems else "PASS", flush=True)
        return 1 if self.problems else 0

    def cleanup(self):
        del_netns(*self.pods, self.node)
        shutil.rmtree(self.tmp, ignore_errors=True)


if __name__ == "__main__":
    run_campaign(Campaign)
