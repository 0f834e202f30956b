#!/usr/bin/env python3
"""Run a command with io_uring denied by seccomp, the way Docker's default
profile denies it.

    python3 tests/support/deny_io_uring.py [--errno EPERM|ENOSYS] -- CMD ARGS...
    python3 tests/support/deny_io_uring.py --self-test

The wrapper sets PR_SET_NO_NEW_PRIVS (so that an unprivileged process may
install a filter), installs a classic-BPF seccomp filter that makes
io_uring_setup, io_uring_enter and io_uring_register fail with EPERM (or the
errno given), and then execs CMD. The filter is inherited by CMD and by every
process it starts; nothing else is restricted.

Docker's default profile (moby, since 2023) leaves the io_uring calls out of its
allow-list, so they hit the profile's default action, SCMP_ACT_ERRNO with
errnoRet 1 (EPERM). ringcast's `--io auto` must log that and fall back to
epoll; `--errno ENOSYS` imitates a kernel built without io_uring instead.

The io_uring system calls are numbered 425, 426 and 427 in the table that every
architecture shares since Linux 5.1 (x86_64, aarch64, and their 32-bit compat
ABIs i386 and arm alike; see include/uapi/asm-generic/unistd.h and
arch/x86/entry/syscalls/syscall_64.tbl). The filter first checks the
architecture in seccomp_data: the native one and its 32-bit compat ABI get the
rule; any other architecture is killed (SECCOMP_RET_KILL_PROCESS), because its
system-call numbers would mean something else -- libseccomp's default
"bad arch" action does the same. On x86_64 the x32 ABI (same audit arch,
numbers with bit 30 set) is covered by masking that bit before comparing.

Standard library only (ctypes). Linux only.
"""

import ctypes
import errno
import os
import platform
import sys

# --- constants from the kernel headers ---------------------------------------

PR_SET_NO_NEW_PRIVS = 38  # include/uapi/linux/prctl.h
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2  # include/uapi/linux/seccomp.h

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# classic BPF opcodes (include/uapi/linux/bpf_common.h, filter.h)
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_ABS = 0x00, 0x20
BPF_AND, BPF_JEQ = 0x50, 0x10
BPF_K = 0x00

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4

# AUDIT_ARCH_* = EM_* | __AUDIT_ARCH_64BIT (0x80000000) | __AUDIT_ARCH_LE (0x40000000)
AUDIT_ARCH_X86_64 = 0xC000003E  # EM_X86_64 = 62
AUDIT_ARCH_I386 = 0x40000003  # EM_386 = 3
AUDIT_ARCH_AARCH64 = 0xC00000B7  # EM_AARCH64 = 183
AUDIT_ARCH_ARM = 0x40000028  # EM_ARM = 40

X32_SYSCALL_BIT = 0x40000000

NR_IO_URING_SETUP = 425
NR_IO_URING_ENTER = 426
NR_IO_URING_REGISTER = 427
IO_URING_SYSCALLS = (NR_IO_URING_SETUP, NR_IO_URING_ENTER, NR_IO_URING_REGISTER)

# platform.machine() -> (native audit arch, compat audit arch or None, mask for nr)
ARCHES = {
    "x86_64": (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0xFFFFFFFF & ~X32_SYSCALL_BIT),
    "amd64": (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0xFFFFFFFF & ~X32_SYSCALL_BIT),
    "aarch64": (AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM, 0xFFFFFFFF),
    "arm64": (AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM, 0xFFFFFFFF),
}


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def stmt(code, k):
    return (code, 0, 0, k)


def jump(code, k, jt, jf):
    return (code, jt, jf, k)


def build_program(machine, deny_errno):
    """The filter as a list of (code, jt, jf, k) for this machine."""
    try:
        native, compat, nr_mask = ARCHES[machine]
    except KeyError:
        raise SystemExit(
            f"deny_io_uring: unsupported architecture {machine!r} "
            f"(supported: {', '.join(sorted(ARCHES))})"
        )
    deny = SECCOMP_RET_ERRNO | (deny_errno & 0xFFFF)
    prog = [
        # 0: A = seccomp_data.arch
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH),
        # 1: native arch -> 4, else 2
        jump(BPF_JMP | BPF_JEQ | BPF_K, native, 2, 0),
        # 2: compat arch (same numbers for io_uring) -> 4, else 3
        jump(BPF_JMP | BPF_JEQ | BPF_K, compat, 1, 0),
        # 3: an architecture we cannot read numbers for
        stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        # 4: A = seccomp_data.nr, with the x32 bit cleared on x86_64
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR),
        stmt(BPF_ALU | BPF_AND | BPF_K, nr_mask),
    ]
    # One equality test per denied call, each jumping to the final "deny".
    n = len(IO_URING_SYSCALLS)
    for i, nr in enumerate(IO_URING_SYSCALLS):
        # remaining tests after this one: n-1-i; then ALLOW; then DENY
        prog.append(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, (n - 1 - i) + 1, 0))
    prog.append(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW))
    prog.append(stmt(BPF_RET | BPF_K, deny))
    return prog


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    libc.syscall.restype = ctypes.c_long
    return libc


def install_filter(deny_errno=errno.EPERM):
    """Deny the io_uring system calls for this process and its descendants."""
    libc = _libc()
    prog = build_program(platform.machine(), deny_errno)
    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), filters)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(e)}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_SECCOMP): {os.strerror(e)}")


def raw_syscall(nr, *args):
    """syscall(nr, args...) -> (return value, errno)."""
    libc = _libc()
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return ret, ctypes.get_errno()


def try_io_uring_setup():
    """io_uring_setup(8, &params) -> (ret, errno); closes the ring if one was made."""
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    ret, err = raw_syscall(NR_IO_URING_SETUP, 8, ctypes.addressof(params))
    if ret >= 0:
        os.close(ret)
    return ret, err


# --- self-test ----------------------------------------------------------------

PROBE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
ret = libc.syscall(ctypes.c_long(425), ctypes.c_long(8), ctypes.c_long(ctypes.addressof(params)))
err = ctypes.get_errno()
if ret >= 0:
    os.close(ret)
print(ret, err)
sys.exit(0 if (ret == -1 and err == int(sys.argv[1])) else 1)
"""


def _in_child(check):
    """Run check() in a forked child; return its exit status (0 = pass)."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 1
        except BaseException as exc:  # report, never fall back into the parent's code
            print(f"    child raised {exc!r}", flush=True)
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        print(f"    child killed by signal {os.WTERMSIG(status)}")
        return 1
    return os.WEXITSTATUS(status)


def self_test():
    machine = platform.machine()
    print(f"deny_io_uring self-test on {machine}, kernel {platform.release()}")
    failures = 0

    before = try_io_uring_setup()
    ret, err = before
    if ret >= 0:
        print("  without the filter: io_uring_setup works (a ring was created and closed)")
    else:
        print(f"  without the filter: io_uring_setup fails with {errno.errorcode.get(err, err)}"
              " (already restricted here; the filtered result is still checked)")

    def filtered_calls():
        install_filter(errno.EPERM)
        ok = True
        ret, err = try_io_uring_setup()
        print(f"    io_uring_setup(8, &params)      -> {ret}, errno {errno.errorcode.get(err, err)}")
        ok &= ret == -1 and err == errno.EPERM
        # With a bad fd these would fail with EBADF if they reached the kernel.
        ret, err = raw_syscall(NR_IO_URING_ENTER, -1, 0, 0, 0, 0, 0)
        print(f"    io_uring_enter(-1, ...)         -> {ret}, errno {errno.errorcode.get(err, err)}")
        ok &= ret == -1 and err == errno.EPERM
        ret, err = raw_syscall(NR_IO_URING_REGISTER, -1, 0, 0, 0)
        print(f"    io_uring_register(-1, ...)      -> {ret}, errno {errno.errorcode.get(err, err)}")
        ok &= ret == -1 and err == errno.EPERM
        # Everything else still works: a neighbouring number and ordinary calls.
        ret, err = raw_syscall(424, -1, 0, 0, 0)  # pidfd_send_signal(-1): EBADF, not EPERM
        print(f"    pidfd_send_signal(-1, ...) (424) -> {ret}, errno {errno.errorcode.get(err, err)}")
        ok &= ret == -1 and err == errno.EBADF
        ok &= os.getpid() > 0 and os.path.exists("/")
        return ok

    print("  child under the filter (fork, install, call):")
    status = _in_child(filtered_calls)
    print(f"  -> {'PASS' if status == 0 else 'FAIL'}")
    failures += status != 0

    print("  child under the filter with --errno ENOSYS:")

    def enosys():
        install_filter(errno.ENOSYS)
        ret, err = try_io_uring_setup()
        print(f"    io_uring_setup -> {ret}, errno {errno.errorcode.get(err, err)}")
        return ret == -1 and err == errno.ENOSYS

    status = _in_child(enosys)
    print(f"  -> {'PASS' if status == 0 else 'FAIL'}")
    failures += status != 0

    # The real path: this script as a wrapper, the filter surviving execve
    # into a fresh interpreter.
    print("  wrapper mode: deny_io_uring.py -- python3 -c <probe> (filter inherited across exec):")
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "--",
                                      sys.executable, "-c", PROBE, str(errno.EPERM)])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    print(f"  -> {'PASS' if ok else 'FAIL'}")
    failures += not ok

    # The parent was never filtered: same result as before the children ran.
    after = try_io_uring_setup()
    same = (after[0] >= 0) == (before[0] >= 0) and (before[0] >= 0 or after[1] == before[1])
    print(f"  parent unaffected: {'PASS' if same else 'FAIL'}")
    failures += not same

    print("self-test", "passed" if failures == 0 else f"FAILED ({failures})")
    return 0 if failures == 0 else 1


# --- command line -------------------------------------------------------------

USAGE = """usage: deny_io_uring.py [--errno EPERM|ENOSYS|<number>] -- CMD [ARGS...]
       deny_io_uring.py --self-test
       deny_io_uring.py --dump      (print the BPF program)"""


def main(argv):
    deny_errno = errno.EPERM
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--self-test":
            return self_test()
        if a == "--dump":
            for n, ins in enumerate(build_program(platform.machine(), deny_errno)):
                print(f"{n:2}: code=0x{ins[0]:02x} jt={ins[1]} jf={ins[2]} k=0x{ins[3]:08x}")
            return 0
        if a in ("-h", "--help"):
            print(USAGE)
            return 0
        if a == "--errno" and i + 1 < len(argv):
            name = argv[i + 1]
            deny_errno = int(name) if name.isdigit() else getattr(errno, name, None)
            if deny_errno is None:
                print(f"deny_io_uring: unknown errno {name!r}", file=sys.stderr)
                return 2
            i += 2
            continue
        if a == "--":
            cmd = argv[i + 1:]
            break
        print(USAGE, file=sys.stderr)
        return 2
    else:
        cmd = []
    if not cmd:
        print(USAGE, file=sys.stderr)
        return 2
    install_filter(deny_errno)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"deny_io_uring: cannot run {cmd[0]!r}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
