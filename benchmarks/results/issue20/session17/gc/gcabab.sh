#!/bin/bash
cd <repo>
out=<out>; mkdir -p $out
for i in 1 2 3; do
 for p in 10000 300000; do
  for v in default thresh; do
   if [ $v = thresh ]; then export GC_THRESH=50000,20,100; else unset GC_THRESH; fi
   PYTHONPATH=$PWD .venv/bin/python <out>.py --patients $p --rate 40000 --rounds 4 --out $out/$v-$p-$i.json > $out/$v-$p-$i.log 2>&1
   echo "$i $p $v $(date +%T)" >> $out/progress
  done
 done
done
