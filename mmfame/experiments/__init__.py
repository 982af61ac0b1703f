"""The experiment engine behind ``tools/reproduce.py``, ``tools/demo.py`` and
``tools/analysis_tools/compare_optimizers.py``: which configs and settings make a matrix of runs,
how each run is written, launched (locally, ``tools/dist_train.sh``, ``tools/slurm_train.sh``) and
resumed, how its logs are read, and how finished runs become tables, metafiles and plots.

It is used from a checkout (``pip install -e ".[mmengine]"``): it runs that checkout's ``tools/``
and ``configs/``, so the wheel does not ship it. Needs mmengine. Importing its modules registers
nothing; only :mod:`.register_ablation`, which the child configs of the ablation settings import,
registers their private optimizer.
"""
