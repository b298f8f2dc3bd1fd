#!/usr/bin/env python3
"""Writes the fuzz targets' starting corpus: fuzz/corpus/<target>/<name>.

`problem` seeds are byte strings in the `arbitrary` crate's encoding of the target's `Input`
(fields in order; integers little-endian; bool = low bit of a byte; Option = a bool then the
value; Vec = (keep-going bool, element) pairs closed by a false byte), one per modifier and
shape family, each a small problem that validates, so the fuzzer starts inside the kernels
instead of spending its minute finding a valid head count. `npy` seeds are small valid .npy
files of each dtype and layout `attnkit run` reads, and a few truncated or malformed headers.

Run it from anywhere: `python3 fuzz/seeds.py` (deterministic; the committed fuzz/corpus is its
output, and .ci/fuzz.sh starts from that). Rerun it and commit the result when the target's
`Input` changes, or the seeds decode to other problems than their names say.
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def u8(x):
    return struct.pack("<B", x)


def u16(x):
    return struct.pack("<H", x)


def i16(x):
    return struct.pack("<h", x)


def f32(x):
    return struct.pack("<f", x)


def boolean(b):
    return u8(1 if b else 0)


def vec(items, enc):
    return b"".join(boolean(True) + enc(x) for x in items) + boolean(False)


def option(x, enc):
    return boolean(False) if x is None else boolean(True) + enc(x)


def problem(b=1, h=2, hkv=1, nq=5, nk=7, d=4, scale=0.5, causal=False, left=-1, right=-1, dtype=0,
            data=None, alibi=None, softcap=None, sinks=None, varlen=None, seqused_k=None, bias=None,
            mask=None):
    """The `Input` of fuzz_targets/problem.rs; dtype 0/1/2 = f32/f16/bf16."""
    data = data if data is not None else [((i * 37) % 17 - 8) / 4.0 for i in range(23)]
    return b"".join([
        u8(b), u8(h), u8(hkv), u16(nq), u16(nk), u16(d), f32(scale), boolean(causal), i16(left), i16(right),
        u8(dtype), vec(data, f32),
        option(alibi, lambda v: vec(v, f32)),
        option(softcap, f32),
        option(sinks, lambda v: vec(v, f32)),
        option(varlen, lambda v: vec(v, lambda p: u8(p[0]) + u8(p[1]))),
        option(seqused_k, lambda v: vec(v, u16)),
        option(bias, lambda p: u8(p[0]) + u8(p[1])),
        option(mask, lambda m: u8(m[0]) + u8(m[1]) + vec(m[2], boolean)),
    ])


def problem_seeds():
    nan, inf = float("nan"), float("inf")
    return {
        "plain": problem(),
        "gqa_causal": problem(b=2, h=4, hkv=2, nq=9, nk=9, d=8, causal=True),
        "decode": problem(h=4, hkv=1, nq=1, nk=33, d=16),
        "window": problem(nq=12, nk=12, d=8, left=3, right=1),
        "f16": problem(dtype=1, nq=6, nk=10),
        "bf16": problem(dtype=2, nq=6, nk=10, d=32),
        "alibi": problem(alibi=[0.5, 0.25], causal=True, nq=8, nk=8),
        "softcap": problem(softcap=2.0, scale=4.0),
        "sinks": problem(sinks=[0.0, -1.0]),
        "varlen": problem(h=2, hkv=2, nq=7, nk=9, varlen=[(3, 4), (4, 5)], causal=True),
        "seqused_k": problem(b=2, nq=3, nk=8, seqused_k=[5, 8]),
        "bias": problem(bias=(1, 2)),
        "mask": problem(mask=(1, 1, [True, False, True, True, False])),
        "all_mods": problem(b=2, h=2, hkv=2, nq=4, nk=6, alibi=[0.1, 0.2], softcap=5.0, sinks=[0.5, 0.5],
                            seqused_k=[4, 6], bias=(2, 1), mask=(1, 2, [True, True, False])),
        "nan_in_data": problem(data=[1.0, nan, -2.0, 0.5, inf, 3.0, -0.25]),
        "long_row": problem(h=1, hkv=1, nq=3, nk=300, d=64),
        "tiny_scale": problem(scale=1e-30),
        "big_values": problem(data=[900.0, -800.0, 1.0, 0.0, -1000.0]),
    }


def npy(descr, shape, payload, fortran=False, version=1):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr, "True" if fortran else "False", "".join(f"{s}," for s in shape))
    lenfmt = "<H" if version == 1 else "<I"
    pre = 10 if version == 1 else 12
    pad = (64 - (pre + len(header) + 1) % 64) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(lenfmt, len(header)) + header.encode() + payload


def npy_seeds():
    shape = (1, 2, 3, 4)
    n = 24
    f32s = b"".join(struct.pack("<f", i / 8) for i in range(n))
    f16s = b"".join(struct.pack("<e", i / 8) for i in range(n))
    bf16s = b"".join(struct.pack("<f", i / 8)[2:] for i in range(n))
    good = npy("<f4", shape, f32s)
    return {
        "f32": good,
        "f16": npy("<f2", shape, f16s),
        "bf16_as_v2": npy("<V2", shape, bf16s),
        "f64": npy("<f8", (2, 3), b"".join(struct.pack("<d", i) for i in range(6))),
        "fortran": npy("<f4", shape, f32s, fortran=True),
        "big_endian": npy(">f4", shape, b"".join(struct.pack(">f", i) for i in range(n))),
        "version2": npy("<f4", shape, f32s, version=2),
        "scalar": npy("<f4", (), struct.pack("<f", 1.0)),
        "bool": npy("|b1", (3,), b"\x01\x00\x01"),
        "truncated_payload": good[:-5],
        "truncated_header": good[:30],
        "huge_shape": npy("<f4", (1 << 40, 1 << 30), b""),
        "nested_brackets": b"\x93NUMPY\x01\x00\x20\x00{'descr': [[[[[[[[[[[[[[[[[[[[   \n",
    }


def main():
    for target, seeds in [("problem", problem_seeds()), ("npy", npy_seeds())]:
        d = os.path.join(ROOT, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds in {d}")


if __name__ == "__main__":
    main()
