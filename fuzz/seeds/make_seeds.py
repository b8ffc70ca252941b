#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into fuzz/corpus/<target>/ (idempotent: files are
named by content hash). Seeds are real inputs: the agent requests chaosctl sends, target
strings of every kind, the experiments/*.yaml files, and netem/tbf/u32 options laid out as
the kernel dumps them (linux/pkt_sched.h, linux/pkt_cls.h; native-endian x86_64).
Run from the repository root: python3 fuzz/seeds/make_seeds.py
"""

import glob
import hashlib
import os
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# --- protobuf, by hand (varint, length-delimited, fixed64) ---
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_varint(field, n):
    return varint(field << 3) + varint(n)


def f_bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def f_double(field, x):
    return varint(field << 3 | 1) + struct.pack("<d", x)


def f_packed(field, values):
    return f_bytes(field, b"".join(varint(v) for v in values))


def inject(target, duration_ms, fault_field, fault, lease=None, labels=None, dry_run=False):
    out = f_bytes(1, target) + f_varint(2, duration_ms) + f_bytes(fault_field, fault)
    if lease:
        out += f_bytes(20, f_bytes(1, lease[0]) + f_varint(2, lease[1]))
    if dry_run:
        out += f_varint(21, 1)
    for k, v in (labels or {}).items():
        out += f_bytes(22, f_bytes(1, k) + f_bytes(2, v))
    return out


CPU, MEMORY, NETWORK, PROCESS, IO, BLACKHOLE, PAUSE, DISK_FILL = 10, 11, 12, 13, 14, 15, 16, 17
LABELS = {"experiment": "demo-kill", "run": "r-0123456789abcdef"}
LEASE = ("chaosctl-host-1234", 5000)


def agent_requests():
    seeds = [
        inject("pid:1234", 0, PROCESS, b""),
        inject("pod:demo/web-1/web", 2000, PROCESS, f_bytes(2, "httpd"), LEASE, LABELS),
        inject("container:abc123", 10000, PROCESS,
               f_bytes(1, "SIGTERM") + f_varint(3, 1000)),
        inject("pod:demo/web-1", 5000, PROCESS, f_bytes(1, "STOP")),
        inject("cgroup:/kubepods/pod1/c1", 4000, CPU, f_varint(1, 90)),
        inject("pod:demo/web-1/web", 4000, CPU, f_varint(1, 50) + f_varint(2, 2) + f_varint(3, 2)),
        inject("pid:77", 30000, MEMORY, f_varint(1, 64 << 20) + f_varint(3, 2000)),
        inject("pod:db/postgres-0/postgres", 30000, MEMORY,
               f_varint(2, 20) + f_varint(4, 1), LEASE),
        inject("pod:demo/web-1/web", 30000, NETWORK,
               f_varint(3, 100000) + f_varint(4, 20000) + f_varint(6, 2)
               + f_double(5, 25.0) + f_double(7, 5.0)),
        inject("pod:demo/web-1/web", 30000, NETWORK,
               f_bytes(1, "eth0") + f_varint(2, 2) + f_varint(3, 50000)
               + f_double(11, 25.0) + f_varint(12, 5)
               + f_bytes(14, "10.0.0.0/8") + f_bytes(14, "192.168.1.7")
               + f_packed(15, [53, 443]) + f_varint(16, 2)
               + f_bytes(17, "10.1.2.3/32") + f_packed(18, [7090]), LEASE, LABELS),
        inject("containerd://0123456789abcdef", 60000, NETWORK, f_varint(13, 125000)),
        inject("pid:42", 60000, NETWORK,
               f_double(9, 1.0) + f_double(10, 0.5) + f_varint(13, 1 << 33)),
        inject("pod:demo/web-1", 10000, BLACKHOLE,
               f_bytes(1, "10.96.0.10/32") + f_packed(2, [53])),
        inject("pod:kube-system/node-x", 10000, BLACKHOLE,
               f_varint(3, 1) + f_bytes(4, "eth0")),
        inject("pid:1", 1000, IO, b""),
        inject("container:abc123", 30000, IO, f_varint(2, 1 << 20) + f_bytes(5, "nvme0n1")),
        inject("pod:db/postgres-0", 30000, IO,
               f_varint(1, 4096) + f_varint(3, 100) + f_bytes(5, "259:0")),
        inject("pod:demo/web-1/web", 20000, PAUSE, b""),
        inject("container:abc123", 30000, DISK_FILL, f_varint(1, 1 << 30) + f_bytes(3, "/data")),
        inject("pid:42", 30000, DISK_FILL, f_varint(2, 90)),
        inject("container:abc123", 30000, DISK_FILL, f_varint(2, 90) + f_bytes(3, "/data/../etc")),
        inject("pod:demo/web-1", 1000, CPU, f_varint(1, 10), dry_run=True),
    ]
    # RevertRequest {id, all}, RenewLeaseRequest {holder, ttl_ms}, GetRequest {id},
    # ListTargetsRequest {pod_namespace}: the same bytes are read as each of them.
    seeds += [
        f_bytes(1, "f-0123456789abcdef"),
        f_varint(2, 1),
        f_bytes(1, "chaosctl-host-1234") + f_varint(2, 5000),
        f_bytes(1, "default"),
    ]
    for s in seeds:
        write("agent_requests", s)


def target_strings():
    for s in [
        "pid:1", "pid:4294967295", "container:abc123", "containerd://abc123",
        "container:containerd://a.b_c-d", "pod:demo/web-1", "pod:demo/web-1/web",
        "pod:kube-system/coredns-5d78c9869d-abcde/coredns", "cgroup:/kubepods/pod1/c1",
        "cgroup:/system.slice/containerd.service/", "  pid:12  ", "pid:0", "cgroup:/",
        "cgroup:/a/../b", "pod:Demo/web", "web-*\nweb-1", "w?b-*-x\nweb-7-x", "*\n",
        "a*b*c*d*e*f*g\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ]:
        write("target_string", s)


# --- netem TCA_OPTIONS: tc_netem_qopt (6 x u32) then attributes ---
def nla(kind, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((-length) % 4)


def prob(pct):
    return min(round(pct / 100 * 0xFFFFFFFF), 0xFFFFFFFF)


def netem(delay_us=0, jitter_us=0, loss=0.0, gap=0, dup=0.0, limit=1000, corr=(0, 0, 0),
          reorder=(0, 0), corrupt=(0, 0), rate=0, extra=b""):
    dn, jn = delay_us * 1000, jitter_us * 1000
    out = struct.pack("=6I", min(dn >> 6, 0xFFFFFFFF), limit, prob(loss), gap, prob(dup),
                      min(jn >> 6, 0xFFFFFFFF))
    out += nla(10, struct.pack("=q", dn)) + nla(11, struct.pack("=q", jn))
    out += nla(1, struct.pack("=3I", *(prob(c) for c in corr)))
    out += nla(3, struct.pack("=2I", *(prob(r) for r in reorder)))
    out += nla(4, struct.pack("=2I", *(prob(c) for c in corrupt)))
    if rate > 0xFFFFFFFF:
        out += nla(8, struct.pack("=Q", rate))
    out += nla(6, struct.pack("=4I", min(rate, 0xFFFFFFFF), 0, 0, 0))
    return out + extra


def netem_seeds():
    for s in [
        netem(delay_us=50000),
        netem(delay_us=100000, jitter_us=20000, corr=(25, 0, 0)),
        netem(loss=5, corr=(0, 25, 0)),
        netem(dup=1, corrupt=(0.5, 0)),
        netem(delay_us=10000, gap=5, reorder=(25, 50)),
        netem(rate=125000),
        netem(rate=1 << 33),
        netem(loss=100),
        netem(delay_us=10000, jitter_us=5000,
              extra=nla(2, struct.pack("=8h", -8192, -4096, -1024, 0, 0, 1024, 4096, 8192))),
        netem(delay_us=1000, extra=nla(7, struct.pack("=I", 1)) + nla(14, struct.pack("=Q", 7))),
        struct.pack("=6I", 781, 1000, 0, 0, 0, 0),  # a legacy dump: ticks only
    ]:
        write("netem_codec", s)


# --- tbf TCA_OPTIONS: TCA_TBF_PARMS (tc_tbf_qopt), TCA_TBF_RATE64, TCA_TBF_BURST ---
def tbf(rate, burst, limit, with_burst=True):
    ratespec = struct.pack("=BBHhHI", 0, 1, 0, 0, 0, min(rate, 0xFFFFFFFF))
    ticks = min((burst * 1_000_000_000 // rate) >> 6, 0xFFFFFFFF)
    qopt = ratespec + b"\0" * 12 + struct.pack("=3I", limit, ticks, 0)
    out = nla(1, qopt)
    if rate > 0xFFFFFFFF:
        out += nla(4, struct.pack("=Q", rate))
    if with_burst:
        out += nla(6, struct.pack("=I", burst))
    return out


def tbf_seeds():
    for s in [
        tbf(125000, 16384, 16384 + 12500),
        tbf(12_500_000, 125_000, 1_375_000),
        tbf(12_500_000, 125_000, 1_375_000, with_burst=False),  # as the kernel dumps it
        tbf(50_000_000_000, 500_000_000, 0xFFFFFFFF),
    ]:
        write("tbf_codec", s)


# --- u32: tc_u32_sel (16 bytes) then keys (be32 mask, be32 val, int off, int offmask) ---
def sel(keys, flags=1):
    out = struct.pack("=BBBxHHhhI", flags, 0, len(keys), 0, 0, 0, 0, 0)
    for mask, value, off in keys:
        out += struct.pack(">II", mask, value) + struct.pack("=ii", off, 0)
    return out


def u32_seeds():
    for s in [
        sel([(0, 0, 0)]),  # match u32 0 0
        sel([(0xFF000000, 0x0A000000, 16)]),  # ip dst 10.0.0.0/8
        sel([(0x0F000000, 0x05000000, 0), (0x00FF0000, 0x00110000, 8),
             (0x0000FFFF, 0x00000035, 20)]),  # udp dport 53
        sel([(0x0F000000, 0x05000000, 0), (0x00FF0000, 0x00060000, 8),
             (0xFFFFFFFF, 0xC0A80107, 12), (0xFFFF0000, 0x1BB20000, 20)]),
    ]:
        write("u32_codec", s)


def experiment_seeds(root):
    for path in sorted(glob.glob(os.path.join(root, "experiments", "*.yaml"))):
        with open(path, "rb") as f:
            write("experiment", f.read())
    for s in [
        "name: x\nmethod:\n  faults:\n    - &s { name: k, target: { targets: [pid:1] }, kill: {} }\n    - *s\n",
        "base: &b { a: 1 }\nother:\n  <<: *b\n",
        "name: net\nmethod:\n  faults:\n    - name: slow\n      target: { targets: ['pod:demo/web-1/web'] }\n"
        "      duration: 30s\n      network: { delay: 100ms, jitter: 10ms, loss: 5, to: [10.0.0.0/8], ports: [80], protocol: tcp }\n",
        "name: bh\nmethod:\n  faults:\n    - name: drop\n      target: { namespace: demo, pod: 'web-*', mode: percent, percent: 50 }\n"
        "      duration: 10s\n      blackhole: { to: [10.96.0.10], ports: [53] }\n",
        "name: mem\nlease_ttl: 5s\nmethod:\n  faults:\n    - name: fill\n      target: { targets: ['pid:1'] }\n"
        "      duration: 30s\n      memory: { size: 64MiB, ramp: 2s }\n",
    ]:
        write("experiment", s)


if __name__ == "__main__":
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    agent_requests()
    target_strings()
    netem_seeds()
    tbf_seeds()
    u32_seeds()
    experiment_seeds(root)
