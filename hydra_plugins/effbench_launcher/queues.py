"""submitit's local and SLURM launchers, as effbench's configs/hydra/launcher/{local,slurm}.yaml use them.

They behave as hydra-submitit-launcher's own, and can be pickled into jobs even
with effbench's sweep-report callback (whose progress bar stays behind).
"""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from hydra_plugins.effbench_launcher._common import JobSidePickling


class EffbenchLocalLauncher(JobSidePickling, LocalLauncher):
    pass


class EffbenchSlurmLauncher(JobSidePickling, SlurmLauncher):
    pass
