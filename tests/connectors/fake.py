#!/usr/bin/env python3
"""A connector that misbehaves on request, to exercise the gateway's process runner.

The mode is argv[1]; modes that take settings read them from the JSON on stdin.
"""

import json
import os
import signal
import sys
import time


def read_payload():
    return json.load(sys.stdin)


def echo():
    json.dump(read_payload(), sys.stdout)


def env():
    json.dump({"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv}, sys.stdout)


def identity():
    import resource

    limits = {
        name: resource.getrlimit(getattr(resource, name)) for name in ("RLIMIT_NOFILE", "RLIMIT_CPU", "RLIMIT_AS")
    }
    json.dump({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "limits": limits}, sys.stdout)


def burn():
    """Spin on the CPU until something stops it."""
    while True:
        pass


def emit():
    """Print exactly what the payload says: stdout text, stderr text, then exit with its status."""
    payload = read_payload()
    sys.stderr.write(payload.get("stderr", ""))
    sys.stderr.flush()
    sys.stdout.write(payload.get("stdout", ""))
    sys.stdout.flush()
    sys.exit(payload.get("exit", 0))


def kill_self():
    payload = read_payload()
    sys.stderr.write("about to die\n")
    sys.stderr.flush()
    os.kill(os.getpid(), payload.get("signal", signal.SIGKILL))


def sleep():
    payload = read_payload()
    time.sleep(payload.get("seconds", 60))
    json.dump({"slept": payload.get("seconds", 60)}, sys.stdout)


def ignore_term():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    read_payload()
    time.sleep(60)


def grandchild():
    """Leave a grandchild holding stdout open, answer, and exit."""
    read_payload()
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    json.dump({"ok": True}, sys.stdout)


def family_hang():
    """Start a grandchild, report its pid on stderr, and hang with it."""
    read_payload()
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    sys.stderr.write(f"grandchild {pid}\n")
    sys.stderr.flush()
    time.sleep(60)


def escape():
    """Leave a process running outside this one's family, holding none of the gateway's pipes, and say its pid.

    By default it is a child in a session of its own. With "double_fork" it is a grandchild, started after
    the setsid; with "in_group" a grandchild that stays in this process's group and session, orphaned at
    once. This process then waits "wait" seconds and answers whether it is still alive, or with "hang"
    hangs until its time limit.
    """
    payload = read_payload()
    in_group = payload.get("in_group", False)
    report, reported = os.pipe()
    if os.fork() == 0:
        if not in_group:
            os.setsid()
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        if not payload.get("double_fork") and not in_group:
            os.write(reported, f"{os.getpid()}\n".encode())
        elif (pid := os.fork()) != 0:
            os.write(reported, f"{pid}\n".encode())
            os._exit(0)
        os.close(reported)
        os.close(report)
        time.sleep(30)
        os._exit(0)
    os.close(reported)
    escaped = int(os.read(report, 64))
    time.sleep(payload.get("wait", 0))
    if payload.get("hang"):
        sys.stderr.write(f"escaped {escaped}\n")
        sys.stderr.flush()
        time.sleep(60)
    json.dump({"escaped": escaped, "alive": alive(escaped)}, sys.stdout)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def flood_stdout():
    size = read_payload().get("bytes", 1)
    chunk = b"x" * 65536
    out = sys.stdout.buffer
    while size > 0:
        out.write(chunk[:size])
        size -= len(chunk)


def flood_stderr_first():
    """Write more than a pipe holds to stderr before reading stdin: the gateway must drain both at once."""
    for number in range(20000):
        sys.stderr.write(f"line {number}\n")
    sys.stderr.flush()
    json.dump(read_payload(), sys.stdout)


def long_stderr_line():
    size = read_payload().get("bytes", 1)
    chunk = "y" * 65536
    while size > 0:
        sys.stderr.write(chunk[:size])
        size -= len(chunk)
    sys.stderr.write("\nlast line\n")
    json.dump({"ok": True}, sys.stdout)


def no_read():
    json.dump({"ok": True}, sys.stdout)


def binary():
    read_payload()
    sys.stdout.buffer.write(b"\xff\xfe\x00garbage\x80")


MODES = {
    "echo": echo,
    "env": env,
    "identity": identity,
    "burn": burn,
    "emit": emit,
    "kill-self": kill_self,
    "sleep": sleep,
    "ignore-term": ignore_term,
    "grandchild": grandchild,
    "family-hang": family_hang,
    "escape": escape,
    "flood-stdout": flood_stdout,
    "flood-stderr-first": flood_stderr_first,
    "long-stderr-line": long_stderr_line,
    "no-read": no_read,
    "binary": binary,
}

if __name__ == "__main__":
    MODES[sys.argv[1]]()
