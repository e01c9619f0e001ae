#!/usr/bin/env python3
"""Time ADD and DEL of trellis against the reference bridge+host-local plugins.

Each plugin binary is exec'd the way a runtime does it (env + config on
stdin), from inside a node network namespace, interleaved pair by pair so
both see the same machine noise. Prints p50/p90 per verb and the ratios.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from cni_exec import CLONE_NEWNET, libc, pct, plugin_env, setns, trellis_conf

N = int(os.environ.get("BENCH_N", "100"))
TRELLIS = sys.argv[1]
REF_DIR = os.environ.get("REF_CNI_DIR", "/usr/lib/cni")


def sh(*args):
    subprocess.run(args, check=True)


def run(binary, cmd, cid, netns, conf):
    env = plugin_env(cmd, cid, netns, "default", "bench", cni_path=REF_DIR)
    t0 = time.perf_counter()
    p = subprocess.run([binary], input=conf, env=env, capture_output=True)
    dt = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise SystemExit(f"{binary} {cmd} failed: {p.stdout.decode()} {p.stderr.decode()}")
    return dt


def main():
    tag = f"bench{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="trellis-bench-")
    nodes = {"trellis": f"{tag}-n1", "reference": f"{tag}-n2"}
    pods = [f"{tag}-p{i}" for i in range(N)]
    trellis = trellis_conf(tmp, ipam_dir="trellis-ipam")
    # What flannel's plugin hands the bridge plugin, with the same subnet.
    ref_conf = json.dumps({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
        "bridge": "cni0", "mtu": 1450, "hairpinMode": True, "isGateway": True,
        "isDefaultGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "dataDir": os.path.join(tmp, "ref-ipam"),
                 "ranges": [[{"subnet": "10.244.1.0/24"}]]},
    }).encode()
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        for n in list(nodes.values()) + pods:
            sh("ip", "netns", "add", n)
        times = {k: {"ADD": [], "DEL": []} for k in nodes}
        for i, pod in enumerate(pods):
            order = ["trellis", "reference"] if i % 2 == 0 else ["reference", "trellis"]
            for who in order:
                setns(nodes[who])
                binary = TRELLIS if who == "trellis" else os.path.join(REF_DIR, "bridge")
                conf = trellis if who == "trellis" else ref_conf
                cid = f"{who}{i}"
                times[who]["ADD"].append(run(binary, "ADD", cid, pod, conf))
                times[who]["DEL"].append(run(binary, "DEL", cid, pod, conf))
                libc.setns(home, CLONE_NEWNET)
        print(f"{N} sequential ADD+DEL pairs per plugin, interleaved (ms, wall time of the exec as a runtime sees it)")
        print(f"{'plugin':<12}{'verb':<6}{'p50':>8}{'p90':>8}{'mean':>8}")
        for who in nodes:
            for verb in ("ADD", "DEL"):
                xs = times[who][verb]
                print(f"{who:<12}{verb:<6}{pct(xs, .5):>8.2f}{pct(xs, .9):>8.2f}{statistics.mean(xs):>8.2f}")
        for verb in ("ADD", "DEL"):
            r = pct(times["trellis"][verb], .5) / pct(times["reference"][verb], .5)
            print(f"ratio trellis/reference {verb} p50: {r:.3f}  (goal <= 0.25)")
    finally:
        libc.setns(home, CLONE_NEWNET)
        for n in list(nodes.values()) + pods:
            subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
