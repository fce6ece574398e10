"""sidecar: watch a SLURM job's files from inside the job and act on what they say."""

__version__ = "0.2.2"
