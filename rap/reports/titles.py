"""Titles of the tables rap adds beside the paper's (Tables 1-7 are titled in ``paper_results``).

A module of its own because ``rap speed`` (rap/speed.py) writes Table 8's timing file with this
title: importing it from ``tables`` would make the speed stage, a long measurement, a dependent
of every edit to the table renderer.
"""

TABLE8_TITLE = "MAC mask sampling: video mask ratio r_v vs pre-training speed and zero-shot MSRVTT"
TABLE9_TITLE = "Where RaCL's weights point: localising the captioned object and the shown words (zero-shot MSRVTT)"
