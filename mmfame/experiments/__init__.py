"""The experiment engine behind ``tools/reproduce.py``, ``tools/demo.py`` and
``tools/analysis_tools/compare_optimizers.py``: which configs and settings make a matrix of runs,
how each run is written, launched (locally, ``tools/dist_train.sh``, ``tools/slurm_train.sh``) and
resumed, how its logs are read, and how finished runs become tables, metafiles and plots.

Needs mmengine (``pip install "mmfame[mmengine]"``); the modules import nothing of it at import
time except :mod:`.ablation`, which registers its private optimizer when mmengine is present.
"""
