#!/bin/bash
while ! grep -q "^CHAINDONE" /tmp/sanity/run2.log 2>/dev/null; do sleep 10; done
cd /work/main
E="PYTHONPATH=/work/main"
for m in erm align_gt; do
  for p in none 0; do
    out=/tmp/datarand/$m-$p
    PYTHONPATH=/work/main /tmp/ci/.venv/bin/python -m egl.cli train --config /tmp/sanity/sanity.yaml --method $m \
      --set train.seeds=0 --set data.permute_labels=$( [ $p = none ] && echo null || echo $p ) --out $out >> /tmp/datarand/log 2>&1
    echo "rc=$? $m $p $(date)" >> /tmp/datarand/log
  done
  for split in test_id/domain0 flipped; do
    PYTHONPATH=/work/main /tmp/ci/.venv/bin/python -m egl.cli sanity --checkpoint /tmp/datarand/$m-0/model.pt \
      --against /tmp/datarand/$m-none/model.pt --split $split --n 128 --out /tmp/datarand/$m-against-${split//\//-} >> /tmp/datarand/log 2>&1
    PYTHONPATH=/work/main /tmp/ci/.venv/bin/python -m egl.cli eval --checkpoint /tmp/datarand/$m-0/model.pt --split $split >> /tmp/datarand/log 2>&1
  done
done
echo DATADONE >> /tmp/datarand/log
