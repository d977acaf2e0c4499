"""rap.registry is the one list of datasets, splits and fine-tuning tasks: what cannot import it
(dvc.yaml) or keys per-dataset code by it (readers, generators, published sizes, report
tables) must agree with it."""

from __future__ import annotations

import yaml

from rap.data import adapters, download, manifest, synthetic
from rap.registry import ALL_DATASETS, DOWNSTREAM_DATASETS, FINETUNE, FINETUNE_TASKS, SPLITS, TEST_SPLIT
from rap.reports import layout

from helpers.config import REPO


def test_tasks_name_real_splits():
    assert FINETUNE_TASKS == tuple(FINETUNE) and set(SPLITS) == set(ALL_DATASETS)
    for name, task in FINETUNE.items():
        assert task.name == name and task.dataset in DOWNSTREAM_DATASETS
        for split in (task.train, task.val, task.test):
            assert split is None or split in SPLITS[task.dataset], (name, split)
    assert all(TEST_SPLIT in SPLITS[d] for d in DOWNSTREAM_DATASETS)


def test_per_dataset_code_covers_exactly_the_registry():
    for table in (adapters.READERS, synthetic.GENERATORS):
        assert tuple(table) == ALL_DATASETS
    # web-scale sources come from URL lists (the field's download tools); the rest from public files
    assert manifest.WEB_DATASETS + tuple(download.PUBLIC) == ALL_DATASETS
    assert set(adapters.PUBLISHED) == {(d, s) for d, splits in SPLITS.items() for s in splits}


def test_dvc_yaml_repeats_the_registry():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(stages["download"]["foreach"]) == ALL_DATASETS
    assert tuple(stages["extract"]["foreach"]) == ALL_DATASETS
    assert tuple(stages["zeroshot"]["foreach"]) == DOWNSTREAM_DATASETS
    tasks = {name: task.dataset for name, task in FINETUNE.items()}
    assert stages["finetune"]["foreach"] == tasks and stages["finetuned"]["foreach"] == tasks


def test_report_tables_hold_every_task_once_under_its_dataset():
    seen = []
    for dataset, blocks in layout.RESULT_TABLES.values():
        assert dataset in DOWNSTREAM_DATASETS
        for _, task in blocks:
            if task is not None:
                assert FINETUNE[task].dataset == dataset == layout.task_dataset(task)
                seen.append(task)
    assert sorted(seen) == sorted(FINETUNE_TASKS)
