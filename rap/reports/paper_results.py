"""The RaP paper's published text-to-video retrieval results (Tables 1-7), stored once as data.

Every row is copied as printed in the paper (../shared/papers/rap-redundancy-aware-pretraining.txt),
baselines included; ``-`` in the paper is ``None`` here. ``data`` holds the pre-training-data
symbol printed after the method name; :data:`DATA_SYMBOLS` gives its meaning (the captions'
footnotes). The paper reports text-to-video R@1/R@5/R@10 (%) and median rank (MdR).

Ablation rows (Tables 5-7) carry ``setting``: the value of the ablated knob (RaCL direction,
frames K, lambda of eq. 10) that the row was trained with, so that this run's rows can be put
beside them. Table 5's caption mentions fine-tuning results, but the printed table only has
the zero-shot block, which is all that is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Footnotes of Tables 1-4: the pre-training data each method used.
DATA_SYMBOLS: dict[str, str] = {
    "♣": "WebVid2M and CC3M (5.5M)",
    "‡": "HowTo100M",
    "◇": "HD-VILA-100M",
    "△": "15.3M image-text pairs",
}

TABLE_TITLES: dict[int, str] = {
    1: "Text-to-video retrieval on MSRVTT (1k-A test): zero-shot and fine-tuned on 7k / 9k training videos",
    2: "Paragraph-to-video retrieval on DiDeMo (test): zero-shot and fine-tuned",
    3: "Text-to-video retrieval on MSVD (test, every caption a query): zero-shot and fine-tuned",
    4: "Text-to-video retrieval on LSMDC (test): zero-shot and fine-tuned",
    5: "Ablation of RaCL (eqs. 7-9): zero-shot MSRVTT",
    6: "Ablation of the number of pre-training frames K: zero-shot MSRVTT",
    7: "Ablation of the RaCL weight lambda (eq. 10): zero-shot MSRVTT",
}


@dataclass(frozen=True)
class PaperRow:
    table: int
    block: str  # "Zero-shot", "Fine-tuning", "Fine-tuning on 7k training videos", ...
    method: str  # as printed, without the citation
    cite: str | None  # the citation printed after the method name
    data: str | None  # pre-training data symbol (key of DATA_SYMBOLS) or None
    r1: float | None
    r5: float | None
    r10: float | None
    mdr: float | None
    ours: bool = False  # a RaP row (the one this run is compared with)
    setting: Any = None  # ablated knob value (Tables 5-7)

    @property
    def label(self) -> str:
        cite = f" ({self.cite})" if self.cite else ""
        return f"{self.method}{cite}"

    @property
    def values(self) -> tuple[float | None, float | None, float | None, float | None]:
        return (self.r1, self.r5, self.r10, self.mdr)


_ZS = "Zero-shot"
_FT = "Fine-tuning"
_FT7 = "Fine-tuning on 7k training videos"
_FT9 = "Fine-tuning on 9k training videos"
_ = None  # '-' in the paper


def _rows(table: int, block: str, items: list[tuple]) -> list[PaperRow]:
    """Rows of Tables 1-4: (method, citation, data symbol, R1, R5, R10, MdR)."""
    return [
        PaperRow(table, block, method, cite, data, r1, r5, r10, mdr, ours=method.startswith("RaP"))
        for method, cite, data, r1, r5, r10, mdr in items
    ]


def _ablation(table: int, items: list[tuple[str, Any, float, float, float, float, bool]]) -> list[PaperRow]:
    """Ablation rows: (label, setting, R1, R5, R10, MdR, is the RaP configuration)."""
    return [
        PaperRow(table, _ZS, label, None, None, r1, r5, r10, mdr, ours=ours, setting=setting)
        for label, setting, r1, r5, r10, mdr, ours in items
    ]


PAPER_ROWS: tuple[PaperRow, ...] = tuple(
    # Table 1: MSRVTT
    _rows(
        1,
        _ZS,
        [
            ("ActBERT", "Zhu and Yang, 2020", "‡", 8.6, 23.4, 33.1, 36.0),
            ("MIL-NCE", "Miech et al., 2020", "‡", 9.9, 24.0, 32.4, 29.5),
            ("SupportSet", "Patrick et al., 2020", "‡", 8.7, 23.0, 31.1, 36.0),
            ("VideoClip", "Xu et al., 2021", "‡", 10.4, 22.2, 30.0, _),
            ("FiT", "Bain et al., 2021", "♣", 18.7, 39.5, 51.6, 10.0),
            ("VIOLET", "Fu et al., 2021", "♣", 25.9, 49.5, 59.7, _),
            ("HD-VILA", "Xue et al., 2022", "◇", 14.4, 31.6, 41.6, 17.5),
            ("OA-Trans", "Wang et al., 2022", "♣", 23.4, 47.5, 55.6, 8.0),
            ("ALPRO", "Li et al., 2022a", "♣", 24.1, 44.7, 55.4, 8.0),
            ("RaP (ours)", None, "♣", 28.9, 47.5, 56.8, 7.0),
        ],
    )
    + _rows(
        1,
        _FT7,
        [
            ("JSFusion", "Yu et al., 2018", _, 10.2, 31.2, 43.2, 13.0),
            ("HT100M", "Miech et al., 2019", "‡", 14.9, 40.2, 52.8, 9.0),
            ("ActBERT", "Zhu and Yang, 2020", "‡", 16.3, 42.8, 56.9, 10.0),
            ("HERO", "Li et al., 2020", "‡", 16.8, 43.4, 57.7, _),
            ("AVLNet", "Le et al., 2020", "‡", 27.1, 55.6, 66.6, 4.0),
            ("VideoClip", "Xu et al., 2021", "‡", 30.9, 55.4, 66.8, 4.0),
            ("NoiseEst", "Amrani et al., 2021", "‡", 17.4, 41.6, 53.6, 8.0),
            ("ClipBERT", "Lei et al., 2021", _, 22.0, 46.8, 59.9, 6.0),
            ("COTS", "Lu et al., 2022", "△", 32.1, 60.8, 70.2, 3.0),
            ("ALPRO", "Li et al., 2022a", "♣", 33.9, 60.7, 73.2, 3.0),
            ("RaP (ours)", None, "♣", 38.5, 64.0, 74.4, 3.0),
        ],
    )
    + _rows(
        1,
        _FT9,
        [
            ("SupportSet", "Patrick et al., 2020", "‡", 30.1, 58.5, 69.3, 3.0),
            ("FiT", "Bain et al., 2021", "♣", 31.0, 59.5, 70.5, 3.0),
            ("VIOLET", "Fu et al., 2021", "♣", 34.5, 63.0, 73.4, _),
            ("COTS", "Lu et al., 2022", "△", 36.8, 63.8, 73.2, 2.0),
            ("HD-VILA", "Xue et al., 2022", "◇", 35.0, 65.2, 77.2, 3.0),
            ("OA-Trans", "Wang et al., 2022", "♣", 35.8, 63.4, 76.5, 3.0),
            ("RaP (ours)", None, "♣", 40.9, 67.2, 76.9, 2.0),
        ],
    )
    # Table 2: DiDeMo
    + _rows(
        2,
        _ZS,
        [
            ("VideoClip", "Xu et al., 2021", _, 16.6, 46.9, _, _),
            ("FiT", "Bain et al., 2021", "♣", 21.1, 46.0, 56.2, 7.0),
            ("VIOLET", "Fu et al., 2021", "♣", 23.5, 49.8, 59.8, _),
            ("OA-Trans", "Wang et al., 2022", "♣", 23.5, 50.4, 59.8, 6.0),
            ("ALPRO", "Li et al., 2022a", "♣", 23.8, 47.3, 57.9, 6.0),
            ("RaP (ours)", None, "♣", 29.5, 55.7, 65.6, 4.0),
        ],
    )
    + _rows(
        2,
        _FT,
        [
            ("ClipBERT", "Lei et al., 2021", _, 20.4, 48.0, 60.8, 6.0),
            ("TT-CE", "Croitoru et al., 2021", _, 21.6, 48.6, 62.9, 6.0),
            ("FiT", "Bain et al., 2021", "♣", 31.0, 59.8, 72.4, 3.0),
            ("VIOLET", "Fu et al., 2021", "♣", 32.6, 62.8, 74.7, _),
            ("ATP", "Buch et al., 2022", _, 26.1, 50.5, _, _),
            ("HD-VILA", "Xue et al., 2022", "◇", 26.0, 54.8, 69.0, 4.0),
            ("OA-Trans", "Wang et al., 2022", "♣", 34.8, 64.4, 75.1, 3.0),
            ("ALPRO", "Li et al., 2022a", "♣", 35.9, 67.5, 78.8, 3.0),
            ("RaP (ours)", None, "♣", 42.9, 71.2, 80.2, 2.0),
        ],
    )
    # Table 3: MSVD
    + _rows(
        3,
        _ZS,
        [
            ("SupportSet", "Patrick et al., 2020", "‡", 21.4, 46.2, 57.7, 6.0),
            ("RaP (ours)", None, "♣", 35.9, 64.3, 73.7, 3.0),
        ],
    )
    + _rows(
        3,
        _FT,
        [
            ("VSE", "Kiros et al., 2014", _, 12.3, 30.1, 42.3, _),
            ("VSE++", "Faghri et al., 2017", _, 15.4, 39.6, 53.0, 9.0),
            ("Multi.Cues", "Mithun et al., 2018", _, 20.3, 47.8, 61.1, 6.0),
            ("CE", "Liu et al., 2019", _, 19.8, 49.0, 63.8, 6.0),
            ("SupportSet", "Patrick et al., 2020", "‡", 28.4, 60.0, 72.9, 4.0),
            ("FiT", "Bain et al., 2021", "♣", 33.7, 64.7, 76.3, 3.0),
            ("OA-Trans", "Wang et al., 2022", "♣", 39.1, 68.4, 80.3, 2.0),
            ("RaP (ours)", None, "♣", 45.4, 74.8, 83.6, 2.0),
        ],
    )
    # Table 4: LSMDC
    + _rows(
        4,
        _ZS,
        [
            ("RaP (ours)", None, "♣", 12.8, 26.6, 33.4, 37.0),
        ],
    )
    + _rows(
        4,
        _FT,
        [
            ("JSFusion", "Yu et al., 2018", _, 9.1, 21.2, 34.1, 36.0),
            ("MoEE", "Miech et al., 2018", _, 9.3, 25.1, 33.4, 27.0),
            ("CE", "Liu et al., 2019", _, 11.2, 26.9, 34.8, 25.3),
            ("MMT", "Gabeur et al., 2020", _, 12.9, 29.2, 38.8, 19.3),
            ("AVLNet", "Le et al., 2020", "‡", 17.0, 38.0, 48.6, _),
            ("Dig", "Wang et al., 2021", _, 15.8, 34.1, 43.6, _),
            ("MDMMT", "Dzabraev et al., 2021", _, 18.8, 38.5, 47.9, _),
            ("FiT", "Bain et al., 2021", "♣", 15.0, 30.8, 39.8, 20.0),
            ("VIOLET", "Fu et al., 2021", "♣", 16.1, 36.6, 41.2, _),
            ("VTMCE", "Ali et al., 2022", _, 14.9, 33.2, _, _),
            ("HD-VILA", "Xue et al., 2022", "◇", 17.2, 32.9, 43.0, 16.0),
            ("OA-Trans", "Wang et al., 2022", "♣", 18.2, 34.3, 43.7, 18.5),
            ("RaP (ours)", None, "♣", 19.7, 39.0, 47.2, 13.0),
        ],
    )
    # Table 5: RaCL ablation (zero-shot MSRVTT); setting = the `racl` knob
    + _ablation(
        5,
        [
            ("w/o RaCL", "none", 24.5, 45.8, 54.4, 8.0, False),
            ("with RaCL_v2t", "v2t", 26.6, 46.0, 55.3, 7.5, False),
            ("with RaCL_t2v", "t2v", 26.3, 46.5, 55.1, 7.0, False),
            ("with RaCL (RaP)", "both", 28.9, 47.5, 56.8, 7.0, True),
        ],
    )
    # Table 6: number of pre-training frames (zero-shot MSRVTT); setting = `frames`
    + _ablation(
        6,
        [
            ("1", 1, 21.3, 40.2, 49.3, 11.0, False),
            ("2", 2, 25.5, 45.8, 55.3, 7.0, False),
            ("4", 4, 28.9, 47.5, 56.8, 7.0, True),
            ("8", 8, 26.6, 45.2, 57.5, 7.0, False),
        ],
    )
    # Table 7: lambda of eq. (10) (zero-shot MSRVTT; the paper's column is headed "ratio")
    + _ablation(
        7,
        [
            ("0.5", 0.5, 25.8, 46.4, 55.4, 7.0, False),
            ("1.0", 1.0, 28.9, 47.5, 56.8, 7.0, True),
            ("2.0", 2.0, 26.7, 48.7, 57.5, 6.0, False),
            ("4.0", 4.0, 26.8, 46.7, 56.4, 8.0, False),
        ],
    )
)


def paper_rows(table: int, block: str | None = None) -> list[PaperRow]:
    """The published rows of one table (optionally one block), in the paper's order."""
    if table not in TABLE_TITLES:
        raise KeyError(f"the paper has no table {table}; it has {sorted(TABLE_TITLES)}")
    return [r for r in PAPER_ROWS if r.table == table and (block is None or r.block == block)]


def paper_blocks(table: int) -> list[str]:
    """Block names of a table in the paper's order."""
    blocks: list[str] = []
    for r in paper_rows(table):
        if r.block not in blocks:
            blocks.append(r.block)
    return blocks


def paper_rap_row(table: int, block: str, setting: Any = None) -> PaperRow | None:
    """The paper's RaP row of a block (Tables 1-4), or the row trained with ``setting``
    (Tables 5-7); None when the paper has no such row."""
    for r in paper_rows(table, block):
        if setting is None and r.ours and r.setting is None:
            return r
        if setting is not None and r.setting is not None and r.setting == setting:
            return r
    return None
