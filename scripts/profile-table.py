#!/usr/bin/env python3
"""Where the microseconds went: splits a folded-stack profile (scripts/profile.sh) into the
parts of a call and prints a Markdown table, each share times the server CPU per call.

    python3 scripts/profile-table.py before=target/profile/mint.folded 233.6 [after=x.folded 113.0 ...]

Each stack is charged to the first part (in the order below) whose pattern one of its frames
contains; the allocator is charged by the leaf frame only, so "allocator" counts malloc/free
wherever they were called from and the other parts exclude it.
"""
import sys

PARTS = [
    ("audit writer thread (write, fdatasync, chain hash)", ("audit-writer",), "thread"),
    ("allocator (malloc/free, any caller)", ("malloc", "_int_free", "__GI___libc_free", "tcache_",
                                             "unlink_chunk", "mi_", "_mi_"), "leaf"),
    ("ES256 signing and token encoding", ("sign_es256", "sign_jwt"), "any"),
    ("policy decision (Cedar)", ("PolicyEngine::decide",), "any"),
    ("caller re-check (pidfd, /proc)", ("resolve_handle", "::fingerprint"), "any"),
    ("audit record encoding and queueing", ("audit::event", "AuditEvent", "audit::send",
                                            "AuditLog::append"), "any"),
    ("task table", ("broker::table::",), "any"),
    ("rest of the handler", ("mint_task_token", "open_task", "introspect_token", "fetch_jwtsvid",
                             "close_task"), "any"),
    ("gRPC, HTTP/2 and socket I/O", ("h2::", "hyper", "tonic", "tower", "writev", "recvmsg",
                                      "sendmsg", "epoll"), "any"),
]


def split(path):
    totals = {name: 0 for name, _, _ in PARTS}
    totals["other (scheduler, kernel)"] = 0
    total = 0
    for line in open(path):
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        total += n
        frames = stack.split(";")
        for name, pats, how in PARTS:
            if how == "thread":
                hit = frames[0] in pats
            elif how == "leaf":
                hit = any(frames[-1].startswith(p) or p in frames[-1] for p in pats)
            else:
                hit = any(p in f for f in frames for p in pats)
            if hit:
                totals[name] += n
                break
        else:
            totals["other (scheduler, kernel)"] += n
    return {k: v / total for k, v in totals.items()}


def main(args):
    runs = [(args[i], float(args[i + 1])) for i in range(0, len(args), 2)]
    labels = [p.split("=", 1)[0] if "=" in p else p.split("/")[-1] for p, _ in runs]
    runs = [(p.split("=", 1)[-1], cpu) for p, cpu in runs]
    shares = [split(p) for p, _ in runs]
    head = "| Part | " + " | ".join(f"{label}: µs (share)" for label in labels) + " |"
    print(head)
    print("|---|" + "---:|" * len(runs))
    for name in shares[0]:
        cells = [f"{s[name] * cpu:.1f} ({s[name] * 100:.0f} %)" for s, (_, cpu) in zip(shares, runs)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **server CPU per call** | " + " | ".join(f"**{cpu:.1f}**" for _, cpu in runs) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3 or len(sys.argv) % 2 == 0:
        sys.exit(__doc__)
    main(sys.argv[1:])
