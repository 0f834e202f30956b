#!/usr/bin/env python3
"""Groups the samples of one process in a `perf record -g` file, restricted to time ranges.

usage: perf-groups.py PERF_DATA PID|cpu:N|comm:NAME RANGES_FILE [--top N] [--handshakes N]

RANGES_FILE holds `start,end` lines (CLOCK_MONOTONIC seconds, as written by storm-run.sh for
the open phase of each storm). Prints:
  1. the self samples by group (kernel by operation, ringcast by module, allocator, libc),
  2. the top N self symbols with their share.
Kernel samples are grouped by the operation they run under, found by walking the call chain
from the root: a loopback send that delivers the segment to the client's socket in softirq
counts as the send.
"""
import collections
import subprocess
import sys

data, pid, ranges_file = sys.argv[1], sys.argv[2], sys.argv[3]
top = int(sys.argv[sys.argv.index('--top') + 1]) if '--top' in sys.argv else 40
handshakes = int(sys.argv[sys.argv.index('--handshakes') + 1]) if '--handshakes' in sys.argv else 0
ranges = [tuple(map(float, l.split(','))) for l in open(ranges_file) if l.strip()]

# Operation markers, matched root-to-leaf: the first one found names the group.
KERNEL_OPS = [
    # io_uring operations
    ('io_accept', 'accept (TCP accept, socket + file setup)'),
    ('io_recv', 'recv'), ('io_recvmsg', 'recv'), ('io_read', 'recv'),
    ('io_send', 'send (incl. loopback delivery to the client)'),
    ('io_sendmsg', 'send (incl. loopback delivery to the client)'),
    ('io_write', 'send (incl. loopback delivery to the client)'),
    ('io_writev', 'send (incl. loopback delivery to the client)'),
    ('io_close', 'close / shutdown'), ('io_shutdown', 'close / shutdown'),
    ('io_async_cancel', 'io_uring cancel'),
    ('io_provide_buffers', 'io_uring buffers'),
    # syscalls (epoll driver and std)
    ('__sys_accept4', 'accept (TCP accept, socket + file setup)'),
    ('do_accept', 'accept (TCP accept, socket + file setup)'),
    ('__sys_connect', 'connect (client: 3-way handshake, server side in softirq too)'),
    ('io_connect', 'connect (client: 3-way handshake, server side in softirq too)'),
    ('__sys_bind', 'socket/bind (client)'), ('__sys_socket', 'socket/bind (client)'),
    ('__sys_setsockopt', 'socket setup (setsockopt, getpeername)'),
    ('do_sock_setsockopt', 'socket setup (setsockopt, getpeername)'),
    ('__sys_getpeername', 'socket setup (setsockopt, getpeername)'),
    ('__sys_getsockname', 'socket setup (setsockopt, getpeername)'),
    ('do_epoll_ctl', 'epoll_ctl (register/modify)'),
    ('do_epoll_wait', 'wait (epoll_wait / io_uring wait, scheduler)'),
    ('__sys_recvfrom', 'recv'), ('__sys_recvmsg', 'recv'), ('ksys_read', 'recv'),
    ('__sys_sendto', 'send (incl. loopback delivery to the client)'),
    ('__sys_sendmsg', 'send (incl. loopback delivery to the client)'),
    ('do_writev', 'send (incl. loopback delivery to the client)'),
    ('ksys_write', 'send (incl. loopback delivery to the client)'),
    ('__x64_sys_close', 'close / shutdown'), ('__x64_sys_shutdown', 'close / shutdown'),
    ('__sys_shutdown', 'close / shutdown'),
    ('__x64_sys_munmap', 'memory (mmap/munmap/page faults)'),
    ('__x64_sys_mmap', 'memory (mmap/munmap/page faults)'),
    ('__x64_sys_madvise', 'memory (mmap/munmap/page faults)'),
    ('__x64_sys_brk', 'memory (mmap/munmap/page faults)'),
    ('exc_page_fault', 'memory (mmap/munmap/page faults)'),
    ('__x64_sys_futex', 'futex'),
    ('__x64_sys_eventfd', 'other syscalls'),
]
KERNEL_SUB = [  # io_uring plumbing that is not one operation
    ('io_submit_sqes', 'io_uring submission'),
    ('io_cqring_wait', 'wait (epoll_wait / io_uring wait, scheduler)'),
    ('__io_run_local_work', 'io_uring task work / completions'),
    ('io_uring_enter', 'io_uring enter/other'),
    ('do_syscall_64', 'other syscalls'),
    ('asm_sysvec_apic_timer_interrupt', 'interrupts / softirq (not under a syscall)'),
    ('irq_exit_rcu', 'interrupts / softirq (not under a syscall)'),
    ('asm_common_interrupt', 'interrupts / softirq (not under a syscall)'),
    ('ret_from_fork', 'kernel threads'),
]


def user_group(sym, dso):
    s = sym
    if dso.startswith('libc'):
        if any(k in s for k in ('malloc', 'free', 'realloc', 'calloc')):
            return 'allocator (mimalloc / libc malloc)'
        return 'libc (memcpy, syscall stubs...)'
    if dso in ('[vdso]',):
        return 'libc (memcpy, syscall stubs...)'
    if 'mi_' in s or 'mimalloc' in s or s.startswith('__rust_alloc') or s.startswith('__rust_dealloc') \
            or s.startswith('__rust_realloc') or 'alloc::raw_vec' in s or 'RawVec' in s:
        return 'allocator (mimalloc / libc malloc)'
    if any(k in s for k in ('handshake', 'httparse', 'sha1', 'Sha1', 'base64', 'Base64', 'origin_form')):
        return 'ringcast: handshake (httparse, sha1, base64)'
    if 'ringcast::http' in s:
        return 'ringcast: http routing'
    if 'ringcast::shard' in s or 'run_shard' in s:
        return 'ringcast: shard loop (accept/upgrade/timers)'
    if 'ringcast::io' in s or 'io_uring::' in s or 'mio::' in s:
        return 'ringcast: io driver'
    if 'ringcast::pubsub' in s:
        return 'ringcast: pubsub (subscribe)'
    if 'ringcast::proto' in s:
        return 'ringcast: proto (frames)'
    if 'ringcast::metrics' in s or 'ringcast::admission' in s:
        return 'ringcast: metrics / admission'
    if 'tracing' in s:
        return 'ringcast: tracing'
    if dso == 'ringcast' or dso.startswith('ringcast') or dso.startswith('peer-'):
        return 'own binary: other (std, core, unresolved)'
    return 'other: ' + dso


def kernel_group(chain):
    # chain: list of symbols, leaf first
    root_first = list(reversed(chain))
    for f in root_first:
        for m, g in KERNEL_OPS:
            if f == m or f.startswith(m + '.') or f == '__x64' + m or f.endswith('_' + m.lstrip('_')) and m.startswith('__x64'):
                return g
    for m, g in KERNEL_SUB:  # by the marker's priority, not the frame's depth
        if any(f == m or f.startswith(m) for f in root_first):
            return g
    if any(f in ('schedule', '__schedule', 'finish_task_switch.isra.0') for f in chain):
        return 'wait (epoll_wait / io_uring wait, scheduler)'
    return 'kernel: other'


def in_ranges(t):
    return any(a <= t <= b for a, b in ranges)


select = (['--cpu', pid[4:]] if pid.startswith('cpu:') else
          ['--comms', pid[5:]] if pid.startswith('comm:') else ['--pid', pid])
proc = subprocess.Popen(['perf', 'script', '-i', data, *select, '-F', 'comm,tid,time,period,ip,sym,dso'],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors='replace')
groups = collections.Counter()
comms = collections.Counter()
syms = collections.Counter()
side = collections.Counter()
total = 0
period_ns = 0


def flush(hdr, frames):
    global total
    if hdr is None or not frames:
        return
    global period_ns
    f = hdr.split()
    t = float(f[-2].rstrip(':'))
    period_ns = int(f[-1])
    if not in_ranges(t):
        return
    total += 1
    comms[hdr.split()[0]] += 1
    sym, dso = frames[0]
    if dso == '[kernel.kallsyms]':
        g = kernel_group([f for f, _ in frames if _ == '[kernel.kallsyms]'])
        groups['kernel: ' + g] += 1
        side['kernel'] += 1
        syms[('[k]', sym, g)] += 1
    else:
        g = user_group(sym, dso)
        groups[g] += 1
        side['ringcast code' if g.startswith('ringcast') else
             'allocator' if g.startswith('allocator') else
             'libc' if g.startswith('libc') else 'own binary: other' if g.startswith('own') else 'other'] += 1
        syms[('[.]', sym, g)] += 1


hdr, frames = None, []
for line in proc.stdout:
    if not line.strip():
        flush(hdr, frames)
        hdr, frames = None, []
        continue
    if not line.startswith('\t') and not line.startswith(' '):
        flush(hdr, frames)
        hdr, frames = line.strip(), []
        continue
    parts = line.strip().split(None, 1)
    if len(parts) < 2:
        continue
    rest = parts[1]
    if rest.endswith(')') and ' (' in rest:
        sym, dso = rest.rsplit(' (', 1)
        dso = dso[:-1].rsplit('/', 1)[-1]
    else:
        sym, dso = rest, '?'
    sym = sym.split('+0x')[0]
    frames.append((sym, dso))
flush(hdr, frames)

print(f'samples of {pid} in {len(ranges)} open phase(s): {total}')
print()
print('| thread name | samples | share |')
print('|---|---:|---:|')
for k, v in comms.most_common(8):
    print(f'| {k} | {v} | {100 * v / total:.1f}% |')
print()
print('| side | samples | share |' + (' µs per handshake |' if handshakes else ''))
print('|---|---:|---:|' + ('---:|' if handshakes else ''))
for k, v in side.most_common():
    print(f'| {k} | {v} | {100 * v / total:.1f}% |' + (f' {v * period_ns / 1000 / handshakes:.2f} |' if handshakes else ''))
print()
per = (lambda v: f' {v * period_ns / 1000 / handshakes:.2f} |') if handshakes else (lambda v: '')
print('| group | samples | share |' + (' µs per handshake |' if handshakes else ''))
print('|---|---:|---:|' + ('---:|' if handshakes else ''))
for k, v in groups.most_common():
    print(f'| {k} | {v} | {100 * v / total:.1f}% |' + per(v))
if handshakes:
    print(f'| total | {total} | 100% |' + per(total))
print()
print(f'top {top} self symbols:')
print()
print('| share | where | symbol | group |')
print('|---:|---|---|---|')
for (where, sym, g), v in syms.most_common(top):
    print(f'| {100 * v / total:.2f}% | {where} | `{sym[:90]}` | {g} |')
