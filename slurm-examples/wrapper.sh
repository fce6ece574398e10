#!/bin/bash
# The simplest form: the work runs under the sidecar (`sidecar ... -- COMMAND`).
# `exec` makes the sidecar the job's main process, so that at the end of the job, or on
# scancel, it has time to act on the last lines and write its stop record.
#SBATCH --job-name=wrapper-demo
#SBATCH --output=slurm-%j.out
#SBATCH --time=00:05:00
#WATCHER name=diverged pattern="loss: ([0-9.]+)" captures=[loss] condition="float(loss) > 5" action=cancel_job(reason="loss $loss")
#WATCHER name=progress pattern="epoch (\d+) done" captures=[epoch] action=store_metric(name="epoch", value="$epoch") rate_limit=none
export PYTHONUNBUFFERED=1
exec sidecar --from-script "$0" -- python3 -c '
import os, sys, time
for epoch in range(1, 4):
    print(f"epoch {epoch} done", flush=True)
    time.sleep(0.2)
if os.environ.get("DIVERGE"):
    print("loss: 9.5", flush=True)
    time.sleep(300)
print("training finished", flush=True)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
'
