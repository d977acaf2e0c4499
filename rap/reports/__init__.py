"""Reports: the paper's published results, the tables and Figure 3 built from the pipeline's outputs.

`layout` maps every (table, row) to the file it is read from; dvc.yaml and the Snakefile use the
same map so that the three always agree.
"""
