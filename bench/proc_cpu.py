"""CPU time of a local process, read from /proc/PID/stat (Linux): what bench/run.py and
bench/profile.py measure the server's processes with."""
import os

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, reaped_children=False):
    """User + system CPU seconds process `pid` has used (fields 14 and 15 of /proc/PID/stat); with
    reaped_children, plus those of its exited children it has waited for (fields 16 and 17: a
    postmaster's count of the backends that have ended)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK
