#!/usr/bin/env python3
"""Share of samples whose call chain contains each named function (inclusive), for one
process (PID) or comm (comm:NAME) in a perf.data file, inside time ranges.
usage: chain-count.py PERF_DATA PID|comm:NAME RANGES_FILE func1,func2,..."""
import subprocess, sys, collections
data, sel, ranges_file = sys.argv[1], sys.argv[2], sys.argv[3]
marks = sys.argv[4].split(',')
ranges = [tuple(map(float, l.split(','))) for l in open(ranges_file) if l.strip()]
select = ['--comms', sel[5:]] if sel.startswith('comm:') else ['--pid', sel]
p = subprocess.run(['perf','script','-i',data,*select,'-F','time,ip,sym'],capture_output=True,text=True,errors='replace').stdout
c = collections.Counter(); tot = 0
for s in p.split('\n\n'):
    lines = s.strip().split('\n')
    if len(lines) < 2: continue
    try: t = float(lines[0].strip().rstrip(':'))
    except ValueError: continue
    if not any(a <= t <= b for a, b in ranges): continue
    tot += 1
    syms = {l.strip().split(None,1)[-1].split('+0x')[0] for l in lines[1:]}
    for m in marks:
        if m in syms: c[m] += 1
print('samples', tot)
for m in marks: print(f'{m}: {c[m]} ({100*c[m]/max(tot,1):.1f}%)')
