#!/usr/bin/env bash
# Busy share of each CPU (user+nice+system+irq+softirq, and steal) over 1 s, from /proc/stat.
read_stat() { grep -E '^cpu[0-9]' /proc/stat; }
a=$(read_stat); sleep 1; b=$(read_stat)
paste <(echo "$a") <(echo "$b") | awk '{
  n=NF/2; u=0; t=0; for(i=2;i<=9;i++){d=$(i+n)-$i; t+=d; if(i!=5&&i!=6)u+=d}; st=$(9+n)-$9;
  printf "%s busy %.0f%% (steal %.0f%%)  ", $1, 100*u/t, 100*st/t }'; echo
